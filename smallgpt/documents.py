"""
Documents for prepare.py: the "text" fields of a .jsonl file (one JSON object per line), of a .parquet file, or
of the train split of a Hugging Face dataset (hf:NAME or hf:NAME:CONFIG), one at a time, never all in memory; or
their "messages", conversations (smallgpt/conversations.py).

- read_documents: the text of every document of a source, in order, with a progress bar (or its messages).
- holds_conversations: whether a source's records are conversations.
- split_documents: each document with its split, decided as it streams past: one in every 1 / val_fraction
  goes to val, spread evenly (document i, from 0, when int((i + 1) * val_fraction) > int(i * val_fraction)).
- batched_documents: documents in batches of about n characters, for encoding on several threads.
Reading .parquet files needs pyarrow, hf: inputs the datasets package (pip install -r requirements-gpt2.txt).
"""

import json
import os
import urllib.parse

from tqdm import tqdm

from smallgpt.errors import UserError
from smallgpt.files import open_file

DOCUMENT_SUFFIXES = (".jsonl", ".parquet")  # files of documents, as opposed to one text


def is_url(path):
    return path.startswith(("http://", "https://"))


def document_suffix(path):
    """'.jsonl' or '.parquet' for a file (or URL) of documents, '' for anything else."""
    suffix = os.path.splitext(urllib.parse.urlparse(path).path if is_url(path) else path)[1].lower()
    return suffix if suffix in DOCUMENT_SUFFIXES else ""


def read_documents(source, field="text", check=None):
    """
    The text of every document of source, in order: a .jsonl or .parquet file, or hf:NAME[:CONFIG]. Or what
    check(record, where) makes of each record's field (a dict; where names the line, row or record it came from).
    """
    check = check or text_of
    if source.startswith("hf:"):
        return hf_documents(source, check)
    if document_suffix(source) == ".parquet":
        return parquet_documents(source, field, check)
    return jsonl_documents(source, check)


def text_of(record, where):
    """A document's text, or a UserError."""
    text = record.get("text") if isinstance(record, dict) else None
    if not isinstance(text, str):
        raise UserError(f"{where} has no \"text\" string: each document must be like {{\"text\": \"...\"}}")
    try:  # JSON's \ud800 escapes can make half of a surrogate pair, which no UTF-8 text holds
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise UserError(f"{where} has a lone surrogate ({text[e.start]!r}) in its \"text\", which is not a "
                        f"character: remove it or replace it with \\ufffd") from None
    return text


def holds_conversations(source):
    """Whether the records of a .jsonl, .parquet or hf: source are conversations ({"messages": [...]})."""
    if source.startswith("hf:") or document_suffix(source) == ".parquet":
        return "messages" in fields(source)
    with open_file(source, "input file", "rb") as f:
        line = next((line for line in f if line.strip()), b"")
    try:
        record = json.loads(line)
    except ValueError:  # the documents' reader says what is wrong with it
        return False
    return isinstance(record, dict) and "messages" in record


def fields(source):
    """The column names of a .parquet file, or the fields of a Hugging Face dataset's first record."""
    if source.startswith("hf:"):
        return next(iter(hf_stream(source)), {}).keys()
    return parquet_file(source).schema_arrow.names


def jsonl_documents(path, check):
    bar = tqdm(total=os.path.getsize(path), unit="B", unit_scale=True, desc="reading", disable=None)
    with open_file(path, "input file", "rb") as f, bar:
        for line_number, line in enumerate(f, start=1):
            bar.update(len(line))
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as e:  # not JSON, or not UTF-8
                raise UserError(f"{path} line {line_number} is not a JSON object ({type(e).__name__}): "
                                f"a .jsonl file has one JSON object per line") from None
            yield check(record, f"{path} line {line_number}")


def parquet_file(path):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError("reading .parquet files needs pyarrow: pip install pyarrow")
    try:
        return pq.ParquetFile(path)
    except Exception as e:  # pyarrow's errors for a file that is not Parquet, or is damaged
        raise UserError(f"{path} is not a readable Parquet file ({type(e).__name__})")


def parquet_documents(path, field, check):
    parquet = parquet_file(path)
    if field not in parquet.schema_arrow.names:
        raise UserError(f"{path} has no \"{field}\" column (its columns: {', '.join(parquet.schema_arrow.names)})")
    row = 0
    with tqdm(total=parquet.metadata.num_rows, unit=" documents", desc="reading", disable=None) as bar:
        for batch in parquet.iter_batches(batch_size=1024, columns=[field]):
            for value in batch.column(0).to_pylist():
                yield check({field: value}, f"{path} row {row}")
                row += 1
            bar.update(batch.num_rows)


def hf_stream(source):
    """The train split of a Hugging Face dataset, hf:NAME or hf:NAME:CONFIG, streamed by the datasets package."""
    name, _, config_name = source[len("hf:"):].partition(":")
    try:
        import datasets
    except ImportError:
        raise UserError(f"--input={source} needs the datasets package: pip install datasets")
    try:
        yield from datasets.load_dataset(name, config_name or None, split="train", streaming=True)
    except Exception as e:  # not on the Hub, no connection, a wrong config name, a broken stream...
        reason = " ".join(line.strip() for line in str(e).splitlines()[:2] if line.strip())
        raise UserError(f"cannot read the Hugging Face dataset {name}: {type(e).__name__}: {reason}")


def hf_documents(source, check):
    name = source[len("hf:"):].partition(":")[0]
    for number, record in enumerate(tqdm(hf_stream(source), unit=" documents", desc="reading", disable=None)):
        yield check(record, f"the dataset {name}, record {number}")


def split_documents(source, val_fraction, field="text", check=None):
    """
    Yield (split, text) for each document of source (or what check makes of its field, as read_documents): one in
    every 1 / val_fraction goes to 'val', spread evenly.
    """
    n = 0
    for n, text in enumerate(read_documents(source, field, check), start=1):
        yield "val" if int(n * val_fraction) > int((n - 1) * val_fraction) else "train", text
    if int(n * val_fraction) == 0:
        raise UserError(f"{source} has only {n} document(s), too few to split with val_fraction={val_fraction}: "
                        f"one document in every {1 / val_fraction:g} goes to val; use more documents or a larger "
                        f"val_fraction")


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
