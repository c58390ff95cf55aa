"""
Turn a text file, or a collection of documents, into the token ids that train.py reads.

    python prepare.py                        # Tiny Shakespeare, one token per character -> data/shakespeare_char/
    python prepare.py --tokenizer=gpt2       # Tiny Shakespeare, GPT-2's BPE             -> data/shakespeare/
    python prepare.py --input=notes.txt      # your own UTF-8 text                       -> data/notes_char/
    python prepare.py --input=https://example.com/book.txt --dataset=book
    python prepare.py --input=docs.jsonl --tokenizer=gpt2               # documents      -> data/docs/
    python prepare.py --input=hf:Skylion007/openwebtext --tokenizer=gpt2  # a Hugging Face dataset -> data/openwebtext/

It writes three files into data/DATASET/:
- train.bin, val.bin: the token ids as raw uint16, readable with np.memmap(path, dtype=np.uint16, mode='r');
- meta.json: the tokenizer: {"tokenizer": "char", "vocab_size": 65, "chars": "\\n !$&'..."} (token i is
  chars[i]) or {"tokenizer": "gpt2", "vocab_size": 50257, "encoding": "gpt2"} (tiktoken's encoding name).

As in nanoGPT, the first (1 - val_fraction) of the characters are the training split and the rest the
validation split, each encoded on its own. Line endings are read as Python's text mode reads them
("\\r\\n" becomes "\\n"). The file is streamed in chunks, twice (once to count characters and collect the
alphabet, once to encode), so memory stays flat however large the text is, and the .bin files appear
only once they are complete.

Documents are the "text" fields of a .jsonl file (one JSON object per line), of a .parquet file, or of
the train split of a Hugging Face dataset, --input=hf:NAME or hf:NAME:CONFIG (NAME as the Hub names it,
or a local folder; streamed with the datasets package, never held in memory). With GPT-2's BPE each
document's tokens are followed by <|endoftext|>, as in nanoGPT's openwebtext; at char level each document
is followed by a newline, and the documents are read twice (a Hugging Face dataset is streamed twice).
Documents are split whole, without counting them first: document i (from 0) goes to val when
int((i + 1) * val_fraction) > int(i * val_fraction), so one in every 1 / val_fraction, spread evenly
(with the default 0.1: documents 9, 19, 29, ...). Reading .parquet files needs pyarrow, hf: inputs the
datasets package (pip install -r requirements-gpt2.txt).
"""

import itertools
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm import tqdm

from configurator import configure, fail

GPT2_META = {"tokenizer": "gpt2", "vocab_size": 50257, "encoding": "gpt2"}  # meta.json of GPT-2's BPE
SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
CHUNK_CHARS = 1 << 20  # characters read (or documents encoded) at a time: memory stays at a few tens of MB
DOCUMENT_SUFFIXES = (".jsonl", ".parquet")  # files of documents, as opposed to one text

# -----------------------------------------------------------------------------
# default config values, overridden by --key=value flags (see configurator.py)
input = ""  # a text, .jsonl or .parquet file, an http(s) URL of one, or hf:NAME[:CONFIG]; empty: Tiny Shakespeare
dataset = ""  # output folder data/DATASET; empty: shakespeare_char / shakespeare, or the input file's name
tokenizer = "char"  # 'char' (one token per distinct character) or 'gpt2' (tiktoken's GPT-2 BPE)
val_fraction = 0.1  # the share kept for validation: the end of a text, or one in every 1/val_fraction documents
# -----------------------------------------------------------------------------


def default_dataset(input, tokenizer):
    """data/ folder name: nanoGPT's names for Tiny Shakespeare, else the input file's stem."""
    if not input:
        return "shakespeare_char" if tokenizer == "char" else "shakespeare"
    if input.startswith("hf:"):
        input = input[len("hf:"):].partition(":")[0]  # hf:Skylion007/openwebtext -> openwebtext
    stem = os.path.splitext(os.path.basename(input.rstrip("/")))[0] or "text"
    return f"{stem}_char" if tokenizer == "char" else stem


def is_url(path):
    return path.startswith(("http://", "https://"))


def document_suffix(path):
    """'.jsonl' or '.parquet' for a file (or URL) of documents, '' for anything else."""
    suffix = os.path.splitext(urllib.parse.urlparse(path).path if is_url(path) else path)[1].lower()
    return suffix if suffix in DOCUMENT_SUFFIXES else ""


def download(url, dest):
    """Fetch url into dest, atomically: an interrupted download leaves no partial file behind."""
    print(f"downloading {url} to {dest}")
    tmp = dest + ".part"
    try:
        with urllib.request.urlopen(url, timeout=30) as response, open(tmp, "wb") as f:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, disable=None) as bar:
                while block := response.read(1 << 20):
                    f.write(block)
                    bar.update(len(block))
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = f"HTTP {e.code} {e.reason}" if isinstance(e, urllib.error.HTTPError) else getattr(e, "reason", e)
        fail(f"could not download {url}: {reason}; check the address and your connection, "
             f"or pass a local file with --input=PATH")
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_chunks(path, desc):
    """Yield the text of path in chunks of CHUNK_CHARS characters, with a progress bar over its bytes."""
    size = os.path.getsize(path)
    with open(path, encoding="utf-8") as f, tqdm(total=size, unit="B", unit_scale=True, desc=desc, disable=None) as bar:
        done = 0
        while True:
            try:
                chunk = f.read(CHUNK_CHARS)
            except UnicodeDecodeError as e:
                fail(f"{path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} cannot be decoded); "
                     f"convert it first, e.g. iconv -f latin1 -t utf-8 {path} > fixed.txt")
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


def code_points(text):
    if text.isascii():  # one byte per character: a quarter of what UTF-32 moves through memory
        return np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def char_meta(alphabet, source):
    """meta.json of the char tokenizer, refusing an alphabet larger than uint16 token ids can number."""
    if len(alphabet) > 65536:
        fail(f"{source} has {len(alphabet)} distinct characters, more than the 65536 token ids "
             f"that uint16 .bin files hold; use --tokenizer=gpt2")
    return {"tokenizer": "char", "vocab_size": len(alphabet), "chars": alphabet}


def split_chunks(path, n_train):
    """Yield (split, text) pieces of path in order: the first n_train characters are 'train', the rest 'val'."""
    position = 0
    for chunk in read_chunks(path, "encoding"):
        cut = min(max(n_train - position, 0), len(chunk))
        if cut > 0:
            yield "train", chunk[:cut]
        if cut < len(chunk):
            yield "val", chunk[cut:]
        position += len(chunk)


# -----------------------------------------------------------------------------
# documents: .jsonl, .parquet and Hugging Face datasets, one text at a time

def read_documents(source):
    """The text of every document of source, in order: a .jsonl or .parquet file, or hf:NAME[:CONFIG]."""
    if source.startswith("hf:"):
        return hf_documents(source)
    return parquet_documents(source) if document_suffix(source) == ".parquet" else jsonl_documents(source)


def jsonl_documents(path):
    with open(path, "rb") as f, tqdm(total=os.path.getsize(path), unit="B", unit_scale=True, desc="reading",
                                     disable=None) as bar:
        for line_number, line in enumerate(f, start=1):
            bar.update(len(line))
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as e:  # not JSON, or not UTF-8
                fail(f"{path} line {line_number} is not a JSON object ({type(e).__name__}): "
                     f"a .jsonl file has one JSON object per line")
            text = record.get("text") if isinstance(record, dict) else None
            if not isinstance(text, str):
                fail(f"{path} line {line_number} has no \"text\" string: each line must be like {{\"text\": \"...\"}}")
            yield text


def parquet_documents(path):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        fail("reading .parquet files needs pyarrow: pip install pyarrow")
    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # pyarrow's errors for a file that is not Parquet, or is damaged
        fail(f"{path} is not a readable Parquet file ({type(e).__name__})")
    if "text" not in parquet.schema_arrow.names:
        fail(f"{path} has no \"text\" column (its columns: {', '.join(parquet.schema_arrow.names)})")
    row = 0
    with tqdm(total=parquet.metadata.num_rows, unit=" documents", desc="reading", disable=None) as bar:
        for batch in parquet.iter_batches(batch_size=1024, columns=["text"]):
            for text in batch.column(0).to_pylist():
                if not isinstance(text, str):
                    fail(f"{path} row {row} has a \"text\" of {text!r}, not a string")
                row += 1
                yield text
            bar.update(batch.num_rows)


def hf_documents(source):
    """Stream the train split of a Hugging Face dataset, hf:NAME or hf:NAME:CONFIG, with the datasets package."""
    name, _, config_name = source[len("hf:"):].partition(":")
    try:
        import datasets
    except ImportError:
        fail(f"--input={source} needs the datasets package: pip install datasets")
    try:
        stream = datasets.load_dataset(name, config_name or None, split="train", streaming=True)
        for record in tqdm(stream, unit=" documents", desc="reading", disable=None):
            if not isinstance(record.get("text"), str):
                fail(f"the dataset {name} has no \"text\" string field (its fields: {', '.join(record)})")
            yield record["text"]
    except Exception as e:  # not on the Hub, no connection, a wrong config name, a broken stream...
        reason = " ".join(line.strip() for line in str(e).splitlines()[:2] if line.strip())
        fail(f"cannot read the Hugging Face dataset {name}: {type(e).__name__}: {reason}")


def split_documents(source, val_fraction):
    """Yield (split, text) for each document of source: one in every 1 / val_fraction goes to 'val', spread evenly."""
    n = 0
    for n, text in enumerate(read_documents(source), start=1):
        yield "val" if int(n * val_fraction) > int((n - 1) * val_fraction) else "train", text
    if int(n * val_fraction) == 0:
        fail(f"{source} has only {n} document(s), too few to split with val_fraction={val_fraction}: one document in "
             f"every {1 / val_fraction:g} goes to val; use more documents or a larger val_fraction")


def batched_documents(documents, n_chars):
    """Lists of (split, text) documents of about n_chars characters in all (or one longer document)."""
    batch, size = [], 0
    for document in documents:
        batch.append(document)
        size += len(document[1])
        if size >= n_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


# -----------------------------------------------------------------------------
# tokenizers: encoding a whole split, and the (encode, decode) pair that sample.py uses

def char_lookup(alphabet):
    """A table from code point to token id, for every code point up to the largest in the alphabet."""
    cps = code_points(alphabet)
    table = np.zeros(int(cps.max()) + 1, dtype=np.uint16)
    table[cps] = np.arange(len(cps), dtype=np.uint16)
    return table


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


def gpt2_ids(enc, text):
    """GPT-2 token ids of text as uint16, special-token text encoded as ordinary text (as encode_ordinary does)."""
    return enc.encode_to_numpy(text, disallowed_special=()).astype(np.uint16)  # no Python list in between


def gpt2_encode_stream(pieces, enc, n_threads):
    """
    Encode a stream of text pieces of one split as if they were one string, on n_threads threads: cut the
    text at safe places only (see gpt2_safe_cut) and encode the parts in parallel. Yields each part's ids.
    """
    return in_parallel(lambda text: gpt2_ids(enc, text), safe_parts(pieces), n_threads)


def safe_parts(pieces):
    """The text of pieces, as one string, in parts that end where gpt2_safe_cut allows."""
    pending = ""
    for piece in pieces:
        pending += piece
        cut = gpt2_safe_cut(pending)
        if cut:
            yield pending[:cut]
            pending = pending[cut:]
    yield pending


def gpt2_encode_documents(documents, enc, n_threads):
    """
    Yield (split, ids) for a stream of (split, text) documents: each document's tokens, then <|endoftext|>,
    a batch of about CHUNK_CHARS characters of documents per thread at a time.
    """
    eot = np.array([enc.eot_token], dtype=np.uint16)
    encode = lambda batch: [(split, gpt2_ids(enc, text)) for split, text in batch]
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


def make_codec(meta):
    """(encode, decode) for the tokenizer that meta.json describes. encode raises ValueError on text it cannot encode."""
    if meta["tokenizer"] == "char":
        chars = meta["chars"]
        stoi = {ch: i for i, ch in enumerate(chars)}

        def encode(text):
            missing = sorted(set(text) - stoi.keys())
            if missing:
                raise ValueError(f"characters not in the vocabulary: {''.join(missing)!r}")
            return [stoi[c] for c in text]

        return encode, lambda ids: "".join(chars[i] for i in ids)
    import tiktoken
    enc = tiktoken.get_encoding(meta["encoding"])
    return lambda text: enc.encode(text, allowed_special={"<|endoftext|>"}), enc.decode


# -----------------------------------------------------------------------------

def resolve_input(input, out_dir):
    """The local file (or hf:NAME) to read, downloading it first where it is a URL."""
    if not input:
        local = os.path.join(out_dir, "input.txt")
        if not os.path.exists(local):
            download(SHAKESPEARE_URL, local)
        return local
    if input.startswith("hf:"):
        return input
    if is_url(input):
        local = os.path.join(out_dir, "input" + (document_suffix(input) or ".txt"))
        download(input, local)
        return local
    if not os.path.isfile(input):
        fail(f"input file '{input}' not found; pass a UTF-8 text file, a .jsonl or .parquet file of documents, "
             f"an http(s) URL of one, or hf:NAME with --input=")
    return input


def encode_text(path, tokenizer, val_fraction):
    """(meta, stream of (split, ids)) for a text file: its first (1 - val_fraction) characters are train."""
    n_chars, alphabet = scan(read_chunks(path, "scanning"), want_alphabet=tokenizer == "char")
    if n_chars == 0:
        fail(f"{path} is empty: there is nothing to train on")
    n_train = int(n_chars * (1 - val_fraction))
    if n_train == 0 or n_train == n_chars:
        fail(f"{path} has only {n_chars} characters, too few to split into train and val "
             f"with val_fraction={val_fraction}; use a longer text")
    if tokenizer == "char":
        meta, table = char_meta(alphabet, path), char_lookup(alphabet)
        encode_split = lambda texts: (table[code_points(text)] for text in texts)
    else:
        import tiktoken
        enc = tiktoken.get_encoding("gpt2")
        n_threads = os.cpu_count() or 1
        meta = GPT2_META
        encode_split = lambda texts: gpt2_encode_stream(texts, enc, n_threads)
    pieces = split_chunks(path, n_train)
    return meta, ((split, ids) for split, group in itertools.groupby(pieces, key=lambda piece: piece[0])
                  for ids in encode_split(text for _, text in group))


def encode_documents(source, tokenizer, val_fraction):
    """(meta, stream of (split, ids)) for documents: whole documents go to train or val (see split_documents)."""
    if tokenizer == "char":
        # the alphabet needs a first pass over all the documents
        n_chars, alphabet = scan((text + "\n" for text in read_documents(source)), want_alphabet=True)
        if n_chars == 0:
            fail(f"{source} has no documents: there is nothing to train on")
        meta, table = char_meta(alphabet, source), char_lookup(alphabet)
        return meta, ((split, table[code_points(text + "\n")]) for split, text in split_documents(source, val_fraction))
    import tiktoken
    enc = tiktoken.get_encoding("gpt2")
    return GPT2_META, gpt2_encode_documents(split_documents(source, val_fraction), enc, os.cpu_count() or 1)


def prepare(input, out_dir, tokenizer, val_fraction):
    """Write out_dir/train.bin, val.bin and meta.json; return the token count of each split."""
    if tokenizer not in ("char", "gpt2"):
        fail(f"unknown tokenizer '{tokenizer}': use --tokenizer=char or --tokenizer=gpt2")
    if not 0 < val_fraction < 1:
        fail(f"val_fraction must be between 0 and 1, got {val_fraction}")
    os.makedirs(out_dir, exist_ok=True)
    source = resolve_input(input, out_dir)
    documents = source.startswith("hf:") or document_suffix(source)
    meta, encoded = (encode_documents if documents else encode_text)(source, tokenizer, val_fraction)

    # Write everything to temporary files and move them into place only when all is well,
    # so that a failure or Ctrl-C never leaves half-written files (or loses the old ones).
    final = {name: os.path.join(out_dir, name) for name in ("train.bin", "val.bin", "meta.json")}
    tmp = {name: path + ".tmp" for name, path in final.items()}
    counts = {"train": 0, "val": 0}
    try:
        with open(tmp["train.bin"], "wb") as train_file, open(tmp["val.bin"], "wb") as val_file:
            files = {"train": train_file, "val": val_file}
            for split, ids in encoded:
                ids.tofile(files[split])
                counts[split] += len(ids)
        with open(tmp["meta.json"], "w", encoding="utf-8") as f:
            json.dump(meta, f, ensure_ascii=False)
        for name in final:
            os.replace(tmp[name], final[name])
    finally:
        for name in tmp.values():
            if os.path.exists(name):
                os.remove(name)
    return counts


def main(argv):
    defaults = dict(input=input, dataset=dataset, tokenizer=tokenizer, val_fraction=val_fraction)
    config = configure(defaults, argv)
    name = config["dataset"] or default_dataset(config["input"], config["tokenizer"])
    out_dir = os.path.join("data", name)
    counts = prepare(config["input"], out_dir, config["tokenizer"], config["val_fraction"])
    print(f"train has {counts['train']:,} tokens")
    print(f"val has {counts['val']:,} tokens")
    print(f"wrote {out_dir}/train.bin, val.bin and meta.json")
    if name != "shakespeare_char":
        print(f"train on it with: python train.py --dataset={name}")


if __name__ == "__main__":
    main(sys.argv[1:])
