"""
Talk to a model finetuned on conversations (python prepare.py --input=chats.jsonl, then train.py on that dataset),
in the terminal: type a message and Enter; the reply is printed as it is generated. Ctrl-D or Ctrl-C ends.

    python chat.py                                       # out/ckpt.pt
    python chat.py --out_dir=out-chat --system="Answer in one word." --temperature=0.5
    python chat.py --start="Spell king."                 # one message, one reply, then exit (for scripts)
    python chat.py --init_from=out/hf                    # a folder that export.py wrote, with its chat template

The model answers as its chat template renders conversations (smallgpt/conversations.py); a model trained on text
alone has none, and continues text with sample.py instead. The conversation is kept: when it grows past what the
model can read (block_size) with room for a reply, its oldest messages are left out (the system prompt stays).
"""

import sys

import torch

from smallgpt.checkpoint import load_model
from smallgpt.configurator import configure
from smallgpt.conversations import chat_context
from smallgpt.devices import start_run
from smallgpt.errors import UserError
from smallgpt.files import read_text
from smallgpt.sampling import Penalties, ready_to_generate, whole_texts
from smallgpt.tokenizer import make_codec

# -----------------------------------------------------------------------------
init_from = "resume"  # 'resume' (out_dir/ckpt.pt), a ckpt.pt, or a Hugging Face folder that export.py wrote
out_dir = "out"  # where train.py wrote ckpt.pt
start = ""  # one message (or FILE:path to read it from a file): one reply, then exit; empty: talk in the terminal
system = ""  # a system prompt (or FILE:path) that opens the conversation; empty: none
max_new_tokens = 256  # [1, inf): the longest reply, in tokens; a reply ends at its end-of-turn marker before that
temperature = 0.8  # (0, inf): below 1, more conservative; a tiny one (or --top_k=1) answers greedily
top_k = 200  # [0, inf): sample among the top_k most likely tokens only; 0 for all
top_p = 1.0  # (0, 1]: sample among the most likely tokens that make up top_p of the probability; 1.0 for all
min_p = 0.0  # [0, 1]: sample among the tokens at least min_p times as likely as the most likely one; 0.0 for all
repetition_penalty = 1.0  # (0, inf): a seen token's logit divided by it where positive, multiplied where negative
frequency_penalty = 0.0  # (-inf, inf); must be a finite number: taken off a seen token's logit per time it was seen
presence_penalty = 0.0  # (-inf, inf); must be a finite number: taken off a seen token's logit once
seed = 1337  # [0, 4294967295]
device = "auto"  # 'auto' (cuda, then mps, then cpu), 'cpu', 'cuda', 'cuda:1', 'mps'
dtype = "auto"  # one of auto, float32, bfloat16, float16: auto: bfloat16 on CUDA where it runs, else float16
compile = False  # torch.compile the model (pays off for long conversations only)
# -----------------------------------------------------------------------------
globals().update(configure(globals(), sys.argv[1:]))
# -----------------------------------------------------------------------------

start, system = (read_text(text[len("FILE:"):], "message file") if text.startswith("FILE:") else text
                 for text in (start, system))
device, dtype, autocast, _, _ = start_run(device, dtype, seed)  # smallgpt/devices.py
model, tokenizer_spec = load_model(init_from, out_dir)
template = tokenizer_spec.get("chat")
if template is None:
    source = f"{out_dir}/ckpt.pt" if init_from == "resume" else init_from
    raise UserError(f"{source} has no chat template: it was trained on text, which sample.py continues; finetune it "
                    f"on conversations first (python prepare.py --input=chats.jsonl, then train.py on that dataset)")
model = ready_to_generate(model, device, dtype, compile)
block_size = model.config.block_size
encode, decode = make_codec(tokenizer_spec)
end_id = encode(template["turn_end"])[0]  # the token that ends a turn: the reply is over when the model draws it
penalties = Penalties(repetition_penalty, frequency_penalty, presence_penalty)
room = min(max_new_tokens, block_size // 2)  # the reply's room in the model's context


def message(role, content):
    """A message, or a UserError for one the model cannot read as the user means it."""
    if template["turn_end"] in content:
        raise UserError(f"the message holds {template['turn_end']!r}, which ends a turn in this model's template")
    try:
        encode(content)
    except ValueError as e:  # a character model meets a character it has never seen
        raise UserError(f"the model cannot read the message: {e}") from None
    return {"role": role, "content": content}


def reply(messages):
    """Generate the assistant's reply to messages, printing it as it comes; returns its text."""
    ids = chat_context(messages, template, encode, end_id, block_size - room)  # the oldest messages may be left out
    x = torch.tensor([ids], dtype=torch.long, device=device)
    tokens = []

    def until_turn_end():
        for token in model.generate_stream(x, max_new_tokens, temperature=temperature, top_k=top_k or None,
                                           top_p=top_p, min_p=min_p, penalties=penalties,
                                           tokenizer_vocab_size=tokenizer_spec["vocab_size"]):
            if token.item() == end_id:
                return
            tokens.append(token.item())
            yield token.item()

    with torch.no_grad(), autocast:
        printed = False
        for text in whole_texts(until_turn_end(), decode):
            text = text if printed else text.lstrip()  # the template puts a space before a message's content
            printed = printed or bool(text)
            print(text, end="", flush=True)
    print(flush=True)
    return decode(tokens).strip()


messages = [message("system", system)] if system else []
if start:  # one message, one reply
    reply([*messages, message("user", start)])
    sys.exit(0)
try:
    while True:
        line = input("> " if sys.stdin.isatty() else "")
        if not line.strip():
            continue
        try:
            user = message("user", line)
        except UserError as e:  # said, and the conversation goes on
            print(f"error: {e}", file=sys.stderr)
            continue
        messages.append(user)
        messages.append({"role": "assistant", "content": reply(messages)})
except (EOFError, KeyboardInterrupt):  # Ctrl-D, or Ctrl-C: the end, quietly
    if sys.stdin.isatty():
        print()  # the shell's prompt on a line of its own
