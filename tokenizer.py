"""
The tokenizers: text to token ids and back. A tokenizer is described by a small JSON object, kept as a data
folder's meta.json and as a checkpoint's "tokenizer", so that whatever has one can encode and decode:
- {"tokenizer": "char", "vocab_size": 65, "chars": "\\n !$&..."}: token i is the character chars[i];
- {"tokenizer": "gpt2", "vocab_size": 50257, "encoding": "gpt2"}: GPT-2's BPE, tiktoken's encoding of that name.

- make_codec(meta): (encode, decode) between a text and a list of ids, for prompts and samples.
- tokenizer_problem(meta): what is wrong with a description read from a file, if anything.
- model_vocab_size(meta), token_bytes(meta): the size of the model's embedding for a tokenizer; the length in
  UTF-8 bytes of each token's text (a special token's is 0), for bits per byte.
- char_meta, char_lookup, code_points: the char tokenizer of an alphabet, and its fast encoding with numpy.
- gpt2_encoding, gpt2_safe_cut: tiktoken's GPT-2 encoding, and where a text can be cut without changing its tokens.
"""

import math

import numpy as np

from configurator import fail

GPT2_META = {"tokenizer": "gpt2", "vocab_size": 50257, "encoding": "gpt2"}
TOKENIZERS = ("char", "gpt2")


def make_codec(meta):
    """(encode, decode) for the tokenizer that meta describes. encode raises ValueError on text it cannot encode."""
    if meta["tokenizer"] == "char":
        chars = meta["chars"]
        stoi = {ch: i for i, ch in enumerate(chars)}

        def encode(text):
            missing = sorted(set(text) - stoi.keys())
            if missing:
                raise ValueError(f"characters not in the vocabulary: {''.join(missing)!r}")
            return [stoi[c] for c in text]

        return encode, lambda ids: "".join(chars[i] for i in ids)
    enc = gpt2_encoding()
    return lambda text: enc.encode(text, allowed_special={"<|endoftext|>"}), enc.decode


def tokenizer_problem(meta):
    """None if meta describes a tokenizer whole; else what is wrong, to follow the name of the file it came from."""
    if not isinstance(meta, dict) or meta.get("tokenizer") not in TOKENIZERS:
        return f"does not describe a tokenizer: \"tokenizer\" must be one of {', '.join(TOKENIZERS)}"
    vocab_size = meta.get("vocab_size")
    if type(vocab_size) is not int or not 1 <= vocab_size <= 65536:
        return f"has a \"vocab_size\" of {vocab_size!r}, not a whole number from 1 to 65536"
    if meta["tokenizer"] == "char" and not (isinstance(meta.get("chars"), str) and len(meta["chars"]) == vocab_size):
        return f"needs \"chars\", a string of its vocab_size ({vocab_size}) characters"
    if meta["tokenizer"] == "gpt2" and (meta.get("encoding") != "gpt2" or vocab_size != 50257):
        return "describes GPT-2's BPE but not as GPT-2 has it: \"encoding\" \"gpt2\", \"vocab_size\" 50257"
    return None


def model_vocab_size(meta):
    """A character model's vocabulary as it is; a BPE's padded up to a multiple of 64, for faster matrix products."""
    return meta["vocab_size"] if meta["tokenizer"] == "char" else math.ceil(meta["vocab_size"] / 64) * 64


def char_meta(alphabet, source):
    """meta.json of the char tokenizer, refusing an alphabet larger than uint16 token ids can number."""
    if len(alphabet) > 65536:
        fail(f"{source} has {len(alphabet)} distinct characters, more than the 65536 token ids "
             f"that uint16 .bin files hold; use --tokenizer=gpt2")
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


def token_bytes(meta):
    """The length in UTF-8 bytes of each token's text, as a numpy array; a special token has none."""
    if meta["tokenizer"] == "char":
        return np.array([len(c.encode("utf-8")) for c in meta["chars"]])
    enc = gpt2_encoding()
    return np.array([0 if i == enc.eot_token else len(enc.decode_single_token_bytes(i)) for i in range(enc.n_vocab)])


def gpt2_encoding():
    import tiktoken
    enc = tiktoken.get_encoding("gpt2")
    # tiktoken before 0.11 turns the text "<|endoftext|>" into the special token even when told not to
    if enc.encode_to_numpy("<|endoftext|>", disallowed_special=()).tolist() != enc.encode_ordinary("<|endoftext|>"):
        fail(f"tiktoken {tiktoken.__version__} encodes the text <|endoftext|> as a special token: "
             f"pip install 'tiktoken>=0.11'")
    return enc


def gpt2_safe_cut(text):
    """
    The last index at which text can be cut without changing its GPT-2 tokens, or 0 if there is none.
    GPT-2's pre-tokenizer never joins a lone newline between two non-space characters to its
    neighbours, so "...x\\n|y..." tokenizes the same in one piece or in two.
    """
    i = text.rfind("\n", 0, len(text) - 1)
    while i > 0:
        if not text[i - 1].isspace() and not text[i + 1].isspace():
            return i + 1
        i = text.rfind("\n", 0, i)
    return 0
