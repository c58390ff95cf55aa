"""
Turn a text file, or a collection of documents, into the token ids that train.py reads.

    python prepare.py                        # Tiny Shakespeare, one token per character -> data/shakespeare_char/
    python prepare.py --tokenizer=gpt2       # Tiny Shakespeare, GPT-2's BPE             -> data/shakespeare/
    python prepare.py --tokenizer=bpe        # Tiny Shakespeare, a BPE learned from it   -> data/shakespeare_bpe/
    python prepare.py --input=notes.txt      # your own UTF-8 text                       -> data/notes_char/
    python prepare.py --input=notes.txt --tokenizer=bpe --vocab_size=2048              # -> data/notes_bpe/
    python prepare.py --input=https://example.com/book.txt --dataset=book
    python prepare.py --input=docs.jsonl --tokenizer=gpt2               # documents      -> data/docs/
    python prepare.py --input=hf:Skylion007/openwebtext --tokenizer=gpt2  # a Hugging Face dataset -> data/openwebtext/

It writes data/DATASET/train.bin and val.bin (the token ids as raw uint16) and meta.json (the tokenizer spec,
see smallgpt/tokenizer.py). A text's first (1 - val_fraction) of characters are the training split, the rest
val; documents (see smallgpt/documents.py) go whole to one split or the other. A BPE is learned from the
training split alone. The input is streamed, so memory stays flat however large it is, and the files appear only
once they are complete.
"""

import contextlib
import itertools
import json
import os
import re
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm import tqdm

from smallgpt.configurator import configure
from smallgpt.conversations import MASK_START, MASK_TRAINED, encode_conversations
from smallgpt.dataset import SPLITS, split_stats
from smallgpt.documents import (batched_documents, document_suffix, holds_conversations, is_url, read_documents,
                                split_documents)
from smallgpt.errors import UserError
from smallgpt.files import download, make_dir, open_file, replaced_atomically
from smallgpt.tokenizer import (GPT2_SPEC, bpe_safe_cut, char_spec, char_table, code_points, learn_bpe,
                                tiktoken_encoding, tokenizer_of)

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
CHUNK_CHARS = 1 << 20  # characters read (or documents encoded) at a time: memory stays at a few tens of MB

# -----------------------------------------------------------------------------
# default config values, overridden by --key=value flags (see smallgpt/configurator.py)
input = ""  # a text, .jsonl or .parquet file, an http(s) URL of one, or hf:NAME[:CONFIG]; empty: Tiny Shakespeare
dataset = ""  # output folder data/DATASET; empty: shakespeare_char / shakespeare / shakespeare_bpe, or the input's name
tokenizer = "char"  # one of char, gpt2, bpe: a token per character, GPT-2's BPE, or one learned from the text
vocab_size = 1024  # [1, 65536]: for --tokenizer=bpe: 256 bytes, the merges learned and <|endoftext|>
tokenizer_from = ""  # a data folder or ckpt.pt: encode with its tokenizer instead, to finetune that model on the input
val_fraction = 0.1  # (0, 1): kept for validation: the end of a text, or one in every 1/val_fraction documents
# -----------------------------------------------------------------------------


def default_dataset(input, tokenizer):
    """data/ folder name: shakespeare for Tiny Shakespeare, else the input file's stem; _char or _bpe after it."""
    tokenizer = tokenizer["tokenizer"] if isinstance(tokenizer, dict) else tokenizer
    stem = "shakespeare"
    if input.startswith("hf:"):
        stem = input[len("hf:"):].partition(":")[0].rstrip("/").rpartition("/")[2]  # hf:Skylion007/openwebtext
    elif input:
        stem = os.path.splitext(os.path.basename(input.rstrip("/")))[0] or "text"
    return stem if tokenizer == "gpt2" else f"{stem}_{tokenizer}"


def read_chunks(path, desc):
    """Yield the text of path in chunks of CHUNK_CHARS characters, with a progress bar over its bytes."""
    size = os.path.getsize(path)
    bar = tqdm(total=size, unit="B", unit_scale=True, desc=desc, disable=None)
    with open_file(path, "input file") as f, bar:
        done = 0
        while True:
            try:
                chunk = f.read(CHUNK_CHARS)
            except UnicodeDecodeError as e:
                raise UserError(f"{path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} cannot be decoded); "
                                f"convert it first, e.g. iconv -f latin1 -t utf-8 {path} > fixed.txt") from None
            if not chunk:
                return
            position = f.buffer.tell()
            bar.update(position - done)
            done = position
            yield chunk


def scan(texts, want_alphabet):
    """Count the characters of texts and, if asked, collect the sorted list of distinct characters."""
    n_chars = 0
    seen = np.zeros(0x110000, dtype=bool)  # one flag per Unicode code point
    for chunk in texts:
        n_chars += len(chunk)
        if want_alphabet:
            seen[code_points(chunk)] = True
    alphabet = "".join(map(chr, np.flatnonzero(seen))) if want_alphabet else None
    return n_chars, alphabet


def split_chunks(path, n_train, desc="encoding"):
    """Yield (split, text) pieces of path in order: the first n_train characters are 'train', the rest 'val'."""
    position = 0
    for chunk in read_chunks(path, desc):
        cut = min(max(n_train - position, 0), len(chunk))
        if cut > 0:
            yield "train", chunk[:cut]
        if cut < len(chunk):
            yield "val", chunk[cut:]
        position += len(chunk)


# -----------------------------------------------------------------------------
# encoding a split on several threads: tiktoken lets go of the GIL while it encodes

def bpe_ids(enc, text, where, start=0):
    """
    BPE token ids of text as uint16, special-token text encoded as ordinary text (as encode_ordinary does).
    where names the text, and start is its first character's position there, for the error tiktoken can give.
    """
    try:
        return enc.encode_to_numpy(text, disallowed_special=()).astype(np.uint16)  # no Python list in between
    except ValueError:  # tiktoken's pre-tokenizer gives up on a run of whitespace about a million long
        run = max(re.finditer(r"\s+", text), key=lambda match: len(match.group()))
        raise UserError(f"{where}: tiktoken cannot encode the run of {len(run.group()):,} whitespace characters at "
                        f"character {start + run.start():,}; break it up, e.g. with newlines")


def bpe_encode_stream(pieces, enc, n_threads, where, start):
    """
    Encode a stream of text pieces of one split, which begins at character start of where, as if they were one
    string, on n_threads threads: cut the text at safe places only (see bpe_safe_cut) and encode the parts in
    parallel. Yields each part's ids.
    """
    encode = lambda part: bpe_ids(enc, part[1], where, start + part[0])
    return in_parallel(encode, safe_parts(pieces), n_threads)


def safe_parts(pieces):
    """(offset, text): the text of pieces, as one string, in parts that end where bpe_safe_cut allows."""
    pending, offset = "", 0
    for piece in pieces:
        looked_at = max(len(pending) - 1, 0)  # before its last character, pending has no cut: it was looked at
        pending += piece
        cut = bpe_safe_cut(pending, looked_at)
        if cut:
            yield offset, pending[:cut]
            pending, offset = pending[cut:], offset + cut
    yield offset, pending


def bpe_encode_documents(documents, enc, n_threads, source):
    """
    Yield (split, ids) for a stream of (split, text) documents of source: each document's tokens, then
    <|endoftext|>, a batch of about CHUNK_CHARS characters of documents per thread at a time.
    """
    eot = np.array([enc.eot_token], dtype=np.uint16)
    encode = lambda batch: [(split, bpe_ids(enc, text, f"a document of {source}")) for split, text in batch]
    for encoded in in_parallel(encode, batched_documents(documents, CHUNK_CHARS), n_threads):
        for split in ("train", "val"):
            parts = [part for where, ids in encoded if where == split for part in (ids, eot)]
            if parts:
                yield split, np.concatenate(parts)


def in_parallel(fn, items, n_threads):
    """
    fn(item) for each of items, in order, computed on n_threads threads while the next items are read.
    tiktoken lets go of the GIL while it encodes, so the threads share the cores.
    """
    with ThreadPoolExecutor(n_threads) as pool:
        in_flight = deque()
        for item in items:
            in_flight.append(pool.submit(fn, item))
            if len(in_flight) > n_threads:
                yield in_flight.popleft().result()
        while in_flight:
            yield in_flight.popleft().result()


# -----------------------------------------------------------------------------

def resolve_input(input, out_dir):
    """The local file (or hf:NAME) to read: a URL is downloaded into out_dir, Tiny Shakespeare if none is given."""
    if input.startswith("hf:"):
        return input
    if input and not is_url(input):
        if not os.path.exists(input):
            raise UserError(f"input file '{input}' not found; pass a UTF-8 text file, a .jsonl or .parquet file of "
                            f"documents, an http(s) URL of one, or hf:NAME with --input=")
        open_file(input, "input file").close()  # a folder, or unreadable: say so before anything else
        return input
    local = os.path.join(out_dir, "input" + (document_suffix(input) or ".txt"))
    if input or not os.path.exists(local):
        make_dir(out_dir, "the data folder")
        download(input or SHAKESPEARE_URL, local, "pass a local file with --input=PATH")
    return local


def encode_text(path, tokenizer, val_fraction, vocab_size):
    """
    (tokenizer_spec, stream of (split, ids)) for a text file: its first (1 - val_fraction) characters are train.
    tokenizer: 'char', 'gpt2' or 'bpe', or the spec of one to encode with (tokenizer_from).
    """
    given, kind = (tokenizer, tokenizer["tokenizer"]) if isinstance(tokenizer, dict) else (None, tokenizer)
    n_chars, alphabet = scan(read_chunks(path, "scanning"), want_alphabet=kind == "char")
    if n_chars == 0:
        raise UserError(f"{path} is empty: there is nothing to train on")
    n_train = int(n_chars * (1 - val_fraction))
    if n_train == 0 or n_train == n_chars:
        raise UserError(f"{path} has only {n_chars} characters, too few to split into train and val "
                        f"with val_fraction={val_fraction}; use a longer text")
    if kind == "char":
        tokenizer_spec = given or char_spec(alphabet, path)
        table = char_table(tokenizer_spec, alphabet, path)
        encode_split = lambda texts, start: (table[code_points(text)] for text in texts)
    else:
        pieces = itertools.takewhile(lambda piece: piece[0] == "train", split_chunks(path, n_train, "learning"))
        train_texts = (text for _, text in pieces)
        tokenizer_spec = given or (GPT2_SPEC if kind == "gpt2" else learn_bpe(train_texts, vocab_size, path))
        enc = tiktoken_encoding(tokenizer_spec)
        encode_split = lambda texts, start: bpe_encode_stream(texts, enc, os.cpu_count() or 1, path, start)
    pieces = split_chunks(path, n_train)
    return tokenizer_spec, ((split, ids) for split, group in itertools.groupby(pieces, key=lambda piece: piece[0])
                            for ids in encode_split((text for _, text in group), 0 if split == "train" else n_train))


def encode_documents(source, tokenizer, val_fraction, vocab_size):
    """
    (tokenizer_spec, stream of (split, ids)) for documents: whole documents go to train or val (split_documents).
    The char tokenizer's alphabet and a learned BPE take a first pass over the documents. tokenizer as encode_text.
    """
    given, kind = (tokenizer, tokenizer["tokenizer"]) if isinstance(tokenizer, dict) else (None, tokenizer)
    if kind == "char":
        n_chars, alphabet = scan((text + "\n" for text in read_documents(source)), want_alphabet=True)
        if n_chars == 0:
            raise UserError(f"{source} has no documents: there is nothing to train on")
        tokenizer_spec = given or char_spec(alphabet, source)
        table = char_table(tokenizer_spec, alphabet, source)
        documents = split_documents(source, val_fraction)
        return tokenizer_spec, ((split, table[code_points(text + "\n")]) for split, text in documents)
    train_texts = (text for split, text in split_documents(source, val_fraction) if split == "train")
    tokenizer_spec = given or (GPT2_SPEC if kind == "gpt2" else learn_bpe(train_texts, vocab_size, source))
    enc = tiktoken_encoding(tokenizer_spec)
    return tokenizer_spec, bpe_encode_documents(split_documents(source, val_fraction), enc, os.cpu_count() or 1, source)


def prepare(input, out_dir, tokenizer, val_fraction, vocab_size=vocab_size):
    """
    Write out_dir/train.bin, val.bin and meta.json; return meta.json's record of each split. tokenizer: 'char',
    'gpt2' or 'bpe', or the spec of one to encode with (tokenizer_from's).
    """
    if tokenizer == "bpe" and vocab_size < 257:
        raise UserError(f"vocab_size must be at least 257 for --tokenizer=bpe (256 bytes and <|endoftext|>), "
                        f"got {vocab_size}")
    source = resolve_input(input, out_dir)
    make_dir(out_dir, "the data folder")
    documents = source.startswith("hf:") or document_suffix(source)
    chat = documents and holds_conversations(source)  # then a mask of the tokens to train on too (conversations.py)
    encode = encode_conversations if chat else encode_documents if documents else encode_text
    tokenizer_spec, encoded = encode(source, tokenizer, val_fraction, vocab_size)
    # the files are written to temporary ones and moved into place only when all went well, so that a failure or
    # Ctrl-C never leaves half-written files (or loses the old ones)
    names = ["train.bin", "val.bin", *(["train_mask.bin", "val_mask.bin"] if chat else [])]
    paths = [os.path.join(out_dir, name) for name in [*names, "meta.json"]]
    counts = {split: np.zeros(65536, dtype=np.int64) for split in SPLITS}  # how often each id occurs
    masks = {split: np.zeros(3, dtype=np.int64) for split in SPLITS}  # how often each mask value occurs
    with replaced_atomically(*paths, what="dataset") as temporary:
        with contextlib.ExitStack() as stack:
            files = {name: stack.enter_context(open(tmp, "wb")) for name, tmp in zip(names, temporary)}
            for split, ids, *mask in encoded:
                files[f"{split}.bin"].write(ids.tobytes())  # numpy's tofile would not say why a write failed
                counts[split] += np.bincount(ids, minlength=65536)
                for m in mask:
                    files[f"{split}_mask.bin"].write(m.tobytes())
                    masks[split] += np.bincount(m, minlength=3)
        meta = {**tokenizer_spec, "splits": {split: split_stats(counts[split], tokenizer_spec) for split in SPLITS}}
        if chat:
            for split in SPLITS:
                meta["splits"][split].update(conversations=int(masks[split][MASK_START]),
                                             trained=int(masks[split][MASK_TRAINED]))
        with open(temporary[-1], "w", encoding="utf-8") as f:
            json.dump(meta, f, ensure_ascii=False)
    return meta["splits"]


def main(argv):
    config = configure(globals(), argv)
    tokenizer = tokenizer_of(config["tokenizer_from"]) if config["tokenizer_from"] else config["tokenizer"]
    name = config["dataset"] or default_dataset(config["input"], tokenizer)
    out_dir = os.path.join("data", name)
    splits = prepare(config["input"], out_dir, tokenizer, config["val_fraction"], config["vocab_size"])
    for split in SPLITS:
        stats = splits[split]
        chat = (f" in {stats['conversations']:,} conversations, {stats['trained']:,} of them trained on (the replies)"
                if "trained" in stats else "")
        print(f"{split} has {stats['tokens']:,} tokens{chat}")
    print(f"wrote {out_dir}/train.bin, val.bin{', their masks' if 'trained' in splits['train'] else ''} and meta.json")
    if name != "shakespeare_char":
        print(f"train on it with: python train.py --dataset={name}")


if __name__ == "__main__":
    main(sys.argv[1:])
