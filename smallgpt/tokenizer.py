"""
The tokenizers: text to token ids and back. A tokenizer is described by its spec, a small JSON object kept in a
data folder's meta.json and as a checkpoint's "tokenizer" (the scripts call it tokenizer_spec), so that whatever
has one can encode and decode:
- {"tokenizer": "char", "vocab_size": 65, "chars": "\\n !$&..."}: token i is the character chars[i];
- {"tokenizer": "gpt2", "vocab_size": 50257, "encoding": "gpt2"}: GPT-2's BPE, tiktoken's encoding of that name;
- {"tokenizer": "bpe", "vocab_size": 1024, "merges": [[32, 116], ...]}: a byte-level BPE learned from a text:
  tokens 0-255 are the bytes, token 256 + k joins the pair of tokens merges[k], the last is <|endoftext|>.

- make_codec(spec): (encode, decode) between a text and a list of ids, for prompts and samples.
- same_tokenizer(a, b): whether two specs encode alike (a spec may also hold a chat template, under "chat").
- tokenizer_problem(spec): what is wrong with a spec read from a file, if anything.
- model_vocab_size(spec), token_bytes(spec): the size of the model's embedding for a tokenizer; the length in
  UTF-8 bytes of each token's text (a special token's is 0), for bits per byte (GPT-2's: gpt2_token_bytes.npy).
- char_spec, char_lookup, code_points: the char tokenizer of an alphabet, and its fast encoding with numpy;
  char_table: the encoding of another text with it, whose characters it must have.
- tokenizer_of(path): the tokenizer of a data folder or checkpoint, to encode new data as that model reads it.
- tiktoken_encoding(spec), bpe_safe_cut: tiktoken's encoding of a BPE, GPT-2's or learned (both split text with
  GPT-2's pre-tokenizer), and where a text can be cut without changing its tokens.
- learn_bpe, bpe_spec, hf_tokenizer: learning a BPE with Hugging Face's tokenizers, its merges checked, and a
  BPE, learned or GPT-2's, as one of its tokenizers, which transformers loads (export.py).
"""

import json
import math
import os
import re
import sys
import time

import numpy as np

from smallgpt.errors import UserError

GPT2_SPEC = {"tokenizer": "gpt2", "vocab_size": 50257, "encoding": "gpt2"}
GPT2_TOKEN_BYTES = os.path.join(os.path.dirname(__file__), "gpt2_token_bytes.npy")  # each token's length, uint8
TOKENIZERS = ("char", "gpt2", "bpe")
EOT = "<|endoftext|>"
LEARNING_PIECE = 1 << 16  # characters handed to the BPE trainer at a time
# GPT-2's pre-tokenizer, which Hugging Face's ByteLevel uses too: BPE merges never cross these pieces
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# Where a text can be cut without changing its tokens under GPT2_PATTERN: where a run of whitespace begins after
# a non-space character (no piece reaches from a non-space character into whitespace), or between two ASCII
# characters of different kinds (letter, digit, other), the first not ' (which begins 's, 't, ...). Whitespace is
# Unicode's White_Space, what \s matches there (Python's isspace also takes \x1c-\x1f); other characters are
# not cut between, as their kinds may differ between Unicode versions.
WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
ASCII_OTHER = "\x00-\x08\x0e-\x1f!-&(-/:-@\\[-`{-\x7f"  # neither letter, digit, whitespace nor '
SAFE_CUT = re.compile(f"(?<=[^{WHITESPACE}])(?=[{WHITESPACE}])|(?<=[A-Za-z])(?=[0-9'{ASCII_OTHER}])"
                      f"|(?<=[0-9])(?=[A-Za-z'{ASCII_OTHER}])|(?<=[{ASCII_OTHER}])(?=[A-Za-z0-9])")


def make_codec(spec):
    """(encode, decode) for the tokenizer that spec describes. encode raises ValueError on text it cannot encode."""
    if spec["tokenizer"] == "char":
        chars = spec["chars"]
        stoi = {ch: i for i, ch in enumerate(chars)}

        def encode(text):
            missing = sorted(set(text) - stoi.keys())
            if missing:
                raise ValueError(f"characters not in the vocabulary: {''.join(missing)!r}")
            return [stoi[c] for c in text]

        return encode, lambda ids: "".join(chars[i] for i in ids)
    enc = tiktoken_encoding(spec)
    return lambda text: enc.encode(text, allowed_special={EOT}), enc.decode


def same_tokenizer(a, b):
    """Whether two specs describe the same tokenizer, whatever chat template either has (see conversations.py)."""
    return {**a, "chat": None} == {**b, "chat": None}


def tokenizer_problem(spec):
    """None if spec describes a tokenizer whole; else what is wrong, to follow the name of the file it came from."""
    if not isinstance(spec, dict) or spec.get("tokenizer") not in TOKENIZERS:
        return f"does not describe a tokenizer: \"tokenizer\" must be one of {', '.join(TOKENIZERS)}"
    vocab_size = spec.get("vocab_size")
    if type(vocab_size) is not int or not 1 <= vocab_size <= 65536:
        return f"has a \"vocab_size\" of {vocab_size!r}, not a whole number from 1 to 65536"
    if spec["tokenizer"] == "char" and not (isinstance(spec.get("chars"), str) and len(spec["chars"]) == vocab_size):
        return f"needs \"chars\", a string of its vocab_size ({vocab_size}) characters"
    if spec["tokenizer"] == "gpt2" and (spec.get("encoding") != "gpt2" or vocab_size != 50257):
        return "describes GPT-2's BPE but not as GPT-2 has it: \"encoding\" \"gpt2\", \"vocab_size\" 50257"
    merges = spec.get("merges")
    if spec["tokenizer"] == "bpe" and not (
            isinstance(merges, list) and len(merges) == vocab_size - 257 and
            all(isinstance(pair, list) and len(pair) == 2 and all(type(t) is int and 0 <= t < 256 + k for t in pair)
                for k, pair in enumerate(merges)) and len(set(bpe_pieces(merges))) == vocab_size - 1):
        return "needs \"merges\": vocab_size - 257 pairs of earlier tokens, each making a new one"
    chat = spec.get("chat")
    if "chat" in spec and not (
            isinstance(chat, dict) and isinstance(chat.get("turn_end"), str) and isinstance(chat.get("headers"), dict)
            and all(isinstance(chat["headers"].get(role), str) for role in ("system", "user", "assistant"))
            and (spec["tokenizer"] != "char" or chat["turn_end"] in spec["chars"])):
        return "has a \"chat\" template that is not whole: a \"turn_end\" token and a \"headers\" text for each role"
    return None


def tokenizer_of(path):
    """The spec of the tokenizer of a data folder (its meta.json) or of a ckpt.pt that train.py wrote, chat aside."""
    if os.path.isdir(path):
        try:
            with open(os.path.join(path, "meta.json"), encoding="utf-8") as f:
                spec = json.load(f)
        except (OSError, ValueError) as e:
            raise UserError(f"{path} is not a data folder that prepare.py wrote: its meta.json cannot be read "
                            f"({type(e).__name__})") from None
    elif os.path.isfile(path):
        import torch  # only here: prepare.py needs no torch otherwise
        try:
            spec = torch.load(path, map_location="cpu", weights_only=True)["tokenizer"]
        except Exception as e:  # truncated, corrupted, not a checkpoint, or not train.py's
            raise UserError(f"{path} is not a checkpoint that train.py wrote ({type(e).__name__})") from None
    else:
        raise UserError(f"tokenizer_from '{path}' not found: name a data folder (data/NAME) or a ckpt.pt")
    problem = tokenizer_problem(spec)
    if problem:
        raise UserError(f"the tokenizer of {path} {problem}")
    return {key: value for key, value in spec.items() if key not in ("splits", "chat")}


def char_table(spec, alphabet, source):
    """char_lookup of a char spec, for a text of alphabet; UserError if the text has characters the spec lacks."""
    missing = "".join(sorted(set(alphabet) - set(spec["chars"])))
    if missing:
        raise UserError(f"{source} has characters that the tokenizer has no token for: {missing[:40]!r}; leave them "
                        f"out, or prepare it with a tokenizer of its own")
    return char_lookup(spec["chars"])


def model_vocab_size(spec):
    """A character model's vocabulary as it is; a BPE's padded up to a multiple of 64, for faster matrix products."""
    return spec["vocab_size"] if spec["tokenizer"] == "char" else math.ceil(spec["vocab_size"] / 64) * 64


def token_bytes(spec):
    """The length in UTF-8 bytes of each token's text, as a numpy array; a special token has none."""
    if spec["tokenizer"] == "char":  # a chat template's marker of a turn's end stands for no text
        marker = spec.get("chat", {}).get("turn_end")
        return np.array([0 if c == marker else len(c.encode("utf-8")) for c in spec["chars"]])
    if spec["tokenizer"] == "bpe":
        return np.array([len(piece) for piece in bpe_pieces(spec["merges"])] + [0])
    # GPT-2's, from the table beside this file, so that a data folder of GPT-2 tokens needs none of its BPE files
    return np.load(GPT2_TOKEN_BYTES, allow_pickle=False).astype(np.int64)


def char_spec(alphabet, source):
    """The spec of the char tokenizer of alphabet, refusing an alphabet larger than uint16 token ids can number."""
    if len(alphabet) > 65536:
        raise UserError(f"{source} has {len(alphabet)} distinct characters, more than the 65536 token ids "
                        f"that uint16 .bin files hold; use --tokenizer=gpt2 or --tokenizer=bpe")
    return {"tokenizer": "char", "vocab_size": len(alphabet), "chars": alphabet}


def code_points(text):
    """The code point of each character of text, as a numpy array."""
    if text.isascii():  # one byte per character: a quarter of what UTF-32 moves through memory
        return np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def char_lookup(alphabet):
    """A table from code point to token id, for every code point up to the largest in the alphabet."""
    cps = code_points(alphabet)
    table = np.zeros(int(cps.max()) + 1, dtype=np.uint16)
    table[cps] = np.arange(len(cps), dtype=np.uint16)
    return table


def tiktoken_encoding(spec):
    """tiktoken's Encoding of GPT-2's BPE, or of a learned one, whose ranks are its token ids."""
    import tiktoken
    if spec["tokenizer"] == "bpe":
        ranks = {piece: i for i, piece in enumerate(bpe_pieces(spec["merges"]))}
        enc = tiktoken.Encoding(f"bpe{spec['vocab_size']}", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                                special_tokens={EOT: spec["vocab_size"] - 1})
    else:
        try:
            enc = tiktoken.get_encoding("gpt2")
        except OSError as e:  # the download of its files (requests' errors are OSErrors), or its cache
            raise UserError(f"GPT-2's BPE files could not be had ({type(e).__name__}): connect to the internet once "
                            f"(tiktoken keeps them), or set TIKTOKEN_CACHE_DIR to a folder that holds them") from None
    # tiktoken before 0.11 turns the text "<|endoftext|>" into the special token even when told not to
    if enc.encode_to_numpy(EOT, disallowed_special=()).tolist() != enc.encode_ordinary(EOT):
        raise UserError(f"tiktoken {tiktoken.__version__} encodes the text {EOT} as a special token: "
                        f"pip install 'tiktoken>=0.11'")
    return enc


def bpe_pieces(merges):
    """The bytes of each token of a learned BPE but <|endoftext|>: the 256 bytes, then each merge's two halves."""
    pieces = [bytes([b]) for b in range(256)]
    for a, b in merges:
        pieces.append(pieces[a] + pieces[b])
    return pieces


def bpe_safe_cut(text, start=0):
    """
    The last index from start on at which text can be cut without changing its tokens (see SAFE_CUT), or 0 if
    there is none. It looks back from the end, where the last cut nearly always is, so that a long text costs
    no more than a short one.
    """
    window = 1 << 12
    while True:
        low = max(len(text) - window, start)
        cuts = [match.start() for match in SAFE_CUT.finditer(text, low)]
        if cuts or low == start:
            return cuts[-1] if cuts else 0
        window *= 4


# -----------------------------------------------------------------------------
# Hugging Face's tokenizers learns the merges and writes tokenizer.json. Its byte-level BPE names each byte by a
# printable character (GPT-2's bytes_to_unicode) and each token by the characters of its bytes.

def learn_bpe(texts, vocab_size, source):
    """The spec of a byte-level BPE of vocab_size tokens learned from texts, streamed (the training split)."""
    hf = tokenizers_package()
    tokenizer = hf.Tokenizer(hf.models.BPE())
    tokenizer.pre_tokenizer = byte_level(hf)
    trainer = hf.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=sys.stderr.isatty(),
                                     initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet())
    start = time.time()
    # the trainer reads a few hundred texts ahead: pieces of 64K characters keep that to tens of megabytes
    pieces = (text[i:i + LEARNING_PIECE] for text in texts for i in range(0, len(text), LEARNING_PIECE))
    tokenizer.train_from_iterator(pieces, trainer)
    spec = bpe_spec(json.loads(tokenizer.to_str())["model"]["merges"], vocab_size, source)
    print(f"learned a BPE of {vocab_size} tokens from {source}'s training split in {time.time() - start:.1f}s")
    return spec


def bpe_spec(hf_merges, vocab_size, source):
    """
    The spec of the BPE that the trainer learned from source, from its merges under Hugging Face's names, checked
    as a meta.json read back is, so that a vocabulary that cannot be used is never written.
    """
    ids = {char: byte for byte, char in byte_names().items()}  # Hugging Face's name of each token -> our id
    merges = []
    for pair in hf_merges:
        a, b = pair.split(" ") if isinstance(pair, str) else pair  # older versions write "a b"
        ids[a + b] = 256 + len(merges)
        merges.append([ids.get(a, -1), ids.get(b, -1)])
    if len(merges) < vocab_size - 257:
        raise UserError(f"the training split of {source} is too short to learn the {vocab_size - 257} merges of a "
                        f"{vocab_size}-token BPE: it has pairs for {len(merges)}; "
                        f"use --vocab_size={257 + len(merges)} or less")
    spec = {"tokenizer": "bpe", "vocab_size": vocab_size, "merges": merges}
    problem = tokenizer_problem(spec)
    if problem:
        raise UserError(f"the BPE that tokenizers learned from {source} {problem}; nothing was written")
    return spec


def hf_tokenizer(spec):
    """A BPE, learned or GPT-2's, as a tokenizers.Tokenizer, whose tokenizer.json transformers' PreTrainedTokenizerFast
    loads."""
    hf = tokenizers_package()
    if spec["tokenizer"] == "gpt2":
        vocab, merges = gpt2_vocab_and_merges()
    else:
        vocab = hf_vocab(spec)
        names = list(vocab)  # Hugging Face's name of each of our ids
        merges = [(names[a], names[b]) for a, b in spec["merges"]]
    tokenizer = hf.Tokenizer(hf.models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = byte_level(hf)
    tokenizer.decoder = hf.decoders.ByteLevel()
    tokenizer.add_special_tokens([EOT])  # the next id: vocab_size - 1
    return tokenizer


def hf_vocab(spec):
    """{Hugging Face's name: our id} of each token of a learned BPE but <|endoftext|>, in the order of the ids."""
    names = byte_names()
    return {"".join(names[b] for b in piece): i for i, piece in enumerate(bpe_pieces(spec["merges"]))}


def gpt2_vocab_and_merges():
    """
    GPT-2's BPE under Hugging Face's names, from tiktoken's ranks: {name: id} of each token but <|endoftext|>, and
    the merges, each the two tokens that BPE, with the tokens ranked before it, joins last into the next token.
    """
    ranks = tiktoken_encoding(GPT2_SPEC)._mergeable_ranks  # the bytes of each token -> its id
    names = byte_names()
    name = lambda piece: "".join(names[b] for b in piece)
    merges = []
    for piece, rank in sorted(ranks.items(), key=lambda item: item[1]):
        parts = [bytes([b]) for b in piece]
        while len(parts) > 2:  # merge the adjacent pair that ranks first, as tiktoken does
            pairs = [(ranks.get(a + b, rank), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            _, i = min(pairs)
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        if len(parts) == 2:
            merges.append((name(parts[0]), name(parts[1])))
    return {name(piece): rank for piece, rank in ranks.items()}, merges


def byte_level(hf):
    """The pre-tokenizer of learning and of export alike: GPT-2's pattern (GPT2_PATTERN), over bytes."""
    return hf.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def tokenizers_package():
    try:
        import tokenizers
    except ImportError:
        raise UserError("a learned BPE needs Hugging Face's tokenizers: pip install tokenizers")
    return tokenizers


def byte_names():
    """GPT-2's printable character for each byte: itself where it is printable, else one from 256 on."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}
