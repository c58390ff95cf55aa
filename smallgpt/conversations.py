"""
Conversations, for finetuning a model to answer in turns: read as OpenAI's fine-tuning files and Hugging Face's chat
datasets hold them, {"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}, and rendered by
a chat template into token ids, with a mask of the tokens a model trains on.

The template: a conversation opens with the turn-end marker; each message is its role's header, a space, its content
(stripped of the whitespace around it) and the marker again:

    <|endoftext|>User: Who wrote Hamlet?<|endoftext|>Assistant: Shakespeare<|endoftext|>

The marker is <|endoftext|> under a BPE (a token GPT-2's weights know: LoRA, whose embeddings are frozen, need
learn no new one) and the character \\x04 at character level. A model trains on each reply: the space and content
after the assistant's header, and the marker that ends its turn. The pieces are encoded one by one and meet where
GPT-2's pre-tokenizer splits text anyway, so that encoding the whole rendered text gives the same ids: what
transformers' apply_chat_template does with jinja_template's template (export.py).

- chat_template(tokenizer): the template of a tokenizer, as a tokenizer spec keeps it under "chat".
- check_messages(record, where, template): a record's messages, or a UserError that names where it comes from.
- rendered(messages, template): the (text, trained) pieces of a conversation.
- encode_conversation(messages, template, encode, end_id): its ids and mask (MASK_START, MASK_TRAINED, 0).
- prompt(messages, template, encode, end_id): the ids a model continues with its reply; chat_context: the end of
  them that a model can read, the oldest messages left out first.
- jinja_template(template): the template as transformers' chat_template.
- encode_conversations(source, tokenizer, val_fraction, vocab_size): what prepare.py writes of conversations.
"""

import numpy as np

from smallgpt.documents import split_documents
from smallgpt.errors import UserError
from smallgpt.tokenizer import EOT, GPT2_SPEC, char_spec, char_table, learn_bpe, tiktoken_encoding

ROLES = ("system", "user", "assistant")
HEADERS = {"system": "System:", "user": "User:", "assistant": "Assistant:"}
CHAR_TURN_END = "\x04"  # ASCII's end of transmission: a character no text uses
# a character model's marker where its tokenizer has no \x04 (tokenizer_from): the first of these that it has and
# that no conversation uses, the rarest in text first
MARKERS = "$&#|~^_`@*%+=<>[]{}\\/;!?"
MASK_TRAINED, MASK_START = 1, 2  # a mask's values: a token trained on; a conversation's first token


def chat_template(tokenizer):
    """The template that a spec of this tokenizer ('char', 'gpt2' or 'bpe') keeps under "chat"."""
    return {"turn_end": CHAR_TURN_END if tokenizer == "char" else EOT, "headers": dict(HEADERS)}


def check_messages(record, where, template):
    """The messages of a record read from a file (where: its name and line), each checked; UserError otherwise."""
    messages = record.get("messages") if isinstance(record, dict) else None
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{where} has no \"messages\" list: each conversation must be like "
                        f"{{\"messages\": [{{\"role\": \"user\", \"content\": \"...\"}}, ...]}}")
    for message in messages:
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ROLES:
            raise UserError(f"{where} has a message whose \"role\" is {role!r}: each must be one of {', '.join(ROLES)}")
        content = message.get("content")
        if not isinstance(content, str):
            raise UserError(f"{where} has a {role} message whose \"content\" is {type(content).__name__}, not a string")
        if template["turn_end"] in content:
            raise UserError(f"{where} has a {role} message holding {template['turn_end']!r}, the chat template's "
                            f"marker of a turn's end, which would end the turn there: remove it")
        try:  # JSON's \ud800 escapes can make half of a surrogate pair, which no UTF-8 text holds
            content.encode("utf-8")
        except UnicodeEncodeError as e:
            raise UserError(f"{where} has a lone surrogate ({content[e.start]!r}) in a {role} message, which is not "
                            f"a character: remove it or replace it with \\ufffd") from None
    if not any(message["role"] == "assistant" for message in messages):
        raise UserError(f"{where} has no assistant message: a conversation without a reply has nothing to train on")
    return [{"role": message["role"], "content": message["content"]} for message in messages]


def rendered(messages, template):
    """The (text, trained) pieces of a conversation as the template renders it: replies and their end are trained."""
    end = template["turn_end"]
    pieces = [(end, False)]
    for message in messages:
        reply = message["role"] == "assistant"
        pieces += [(template["headers"][message["role"]], False), (" " + message["content"].strip(), reply),
                   (end, reply)]
    return pieces


def encode_pieces(pieces, template, encode, end_id):
    """(ids, trained flags) of (text, trained) pieces: the marker is end_id, every other text encoded as text."""
    ids, trained = [], []
    for text, train in pieces:
        piece = [end_id] if text == template["turn_end"] else encode(text)
        ids += piece
        trained += [train] * len(piece)
    return ids, trained


def encode_conversation(messages, template, encode, end_id):
    """(ids uint16, mask uint8) of a conversation: MASK_START at its first token, MASK_TRAINED on the replies'."""
    ids, trained = encode_pieces(rendered(messages, template), template, encode, end_id)
    mask = np.array(trained, dtype=np.uint8) * MASK_TRAINED
    mask[0] = MASK_START
    return np.array(ids, dtype=np.uint16), mask


def prompt(messages, template, encode, end_id):
    """The ids of a conversation so far and the assistant's header: what a model continues with its reply."""
    return encode_pieces(rendered(messages, template) + [(template["headers"]["assistant"], False)], template, encode,
                         end_id)[0]


def chat_context(messages, template, encode, end_id, size):
    """
    The last size ids of the prompt of messages (see prompt), with the oldest messages left out first while it is
    longer, but a system prompt: a conversation kept within what a model can read.
    """
    first = 1 if messages[0]["role"] == "system" else 0
    ids = prompt(messages, template, encode, end_id)
    while len(ids) > size and len(messages) > first + 1:
        messages = messages[:first] + messages[first + 1:]
        ids = prompt(messages, template, encode, end_id)
    return ids[-size:]  # a last message too long for the context loses its start


def jinja_template(template):
    """The template in Jinja, as transformers' apply_chat_template renders it (add_generation_prompt: the header)."""
    end, headers = template["turn_end"], template["headers"]
    branches = "{% elif ".join(f"message['role'] == '{role}' %}}{headers[role]}" for role in ROLES)
    header = "{% if " + branches + "{% endif %}"
    return (end + "{% for message in messages %}" + header + " {{ message['content'] | trim }}" + end +
            "{% endfor %}{% if add_generation_prompt %}" + headers["assistant"] + "{% endif %}")


def encode_conversations(source, tokenizer, val_fraction, vocab_size):
    """
    (tokenizer spec with its "chat" template, stream of (split, ids, mask)) for prepare.py: conversations go whole to
    train or val, as documents do (smallgpt/documents.py). The char tokenizer's alphabet (the marker in it) and a
    learned BPE take a first pass over the rendered conversations. tokenizer: 'char', 'gpt2', 'bpe', or the spec of
    one to encode with (whose characters, for a char tokenizer, the conversations must use alone).
    """
    given, kind = (tokenizer, tokenizer["tokenizer"]) if isinstance(tokenizer, dict) else (None, tokenizer)
    template = chat_template(kind)
    check = lambda record, where: check_messages(record, where, template)
    conversations = lambda: split_documents(source, val_fraction, "messages", check)
    if kind == "char":
        alphabet = set()
        for _, messages in conversations():
            alphabet.update(*(text for text, _ in rendered(messages, template)))
        spec = given or char_spec("".join(sorted(alphabet)), source)
        char_table(spec, alphabet - {CHAR_TURN_END}, source)  # every character of theirs is the tokenizer's
        if template["turn_end"] not in spec["chars"]:  # a character model's own marker, unused by the conversations
            template["turn_end"] = next((c for c in MARKERS if c in spec["chars"] and c not in alphabet), "")
            if not template["turn_end"]:
                raise UserError(f"the conversations of {source} leave none of the characters {MARKERS!r} free to end "
                                f"a turn with, and the tokenizer has no \\x04: prepare them with another tokenizer")
        stoi = {c: i for i, c in enumerate(spec["chars"])}
        encode, end_id = lambda text: [stoi[c] for c in text], stoi[template["turn_end"]]
    else:
        train_texts = ("\n".join(text for text, _ in rendered(messages, template) if text != EOT)
                       for split, messages in conversations() if split == "train")
        spec = given or (GPT2_SPEC if kind == "gpt2" else learn_bpe(train_texts, vocab_size, source))
        enc = tiktoken_encoding(spec)
        encode, end_id = enc.encode_ordinary, enc.eot_token
    encoded = ((split, *encode_conversation(messages, template, encode, end_id)) for split, messages in conversations())
    return {**spec, "chat": template}, batched(encoded)


def batched(encoded, n_tokens=1 << 20):
    """(split, ids, mask) of many conversations at a time, about n_tokens tokens of one split, in their order."""
    pending, sizes = {"train": [], "val": []}, {"train": 0, "val": 0}
    for split, ids, mask in encoded:
        pending[split].append((ids, mask))
        sizes[split] += len(ids)
        if sizes[split] >= n_tokens:
            yield split, *map(np.concatenate, zip(*pending[split]))
            pending[split], sizes[split] = [], 0
    for split, parts in pending.items():
        if parts:
            yield split, *map(np.concatenate, zip(*parts))
