"""prepare.py: the splits and token ids, streaming, documents, downloads, and clean failures on bad input."""

import json
import re
import sys

import numpy as np
import pytest

import prepare
from conftest import (SHAKESPEARE, assert_clean_error, needs_gpt2_bpe, needs_shakespeare, prepare_in, run_script,
                      sample_text, user_error)
from smallgpt import tokenizer
from smallgpt.errors import UserError


def read_dataset(folder):
    """The ids of each split, and the tokenizer of meta.json, whose record of the splits must match the ids."""
    ids = {split: np.memmap(folder / f"{split}.bin", dtype=np.uint16, mode="r") for split in ("train", "val")}
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    splits = meta.pop("splits")
    for split, split_ids in ids.items():
        assert splits[split]["tokens"] == len(split_ids) and splits[split]["max_id"] == int(split_ids.max())
    return ids, meta


def nanogpt_char_split(text):
    """nanoGPT's way: the sorted characters are the vocabulary; the first 90% of characters are train."""
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    n = len(text)
    return chars, [stoi[c] for c in text[:int(n * 0.9)]], [stoi[c] for c in text[int(n * 0.9):]]


def test_char_level_matches_nanogpt_and_decodes_back(tmp_path):
    text = sample_text(5000) + "café ☃ naïve\n"
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    printed = prepare_in(tmp_path, "--input=t.txt")
    assert "data/t_char" in printed and "python train.py --dataset=t_char" in printed
    ids, meta = read_dataset(tmp_path / "data" / "t_char")
    splits = json.loads((tmp_path / "data" / "t_char" / "meta.json").read_text(encoding="utf-8"))["splits"]
    n_train = int(len(text) * 0.9)
    assert [splits[split]["bytes"] for split in ("train", "val")] == [len(text[:n_train].encode()),
                                                                      len(text[n_train:].encode())]
    chars, train, val = nanogpt_char_split(text)
    assert meta == {"tokenizer": "char", "vocab_size": len(chars), "chars": "".join(chars)}
    assert ids["train"].tolist() == train and ids["val"].tolist() == val
    assert f"train has {len(train):,} tokens" in printed
    encode, decode = tokenizer.make_codec(meta)
    assert decode(ids["train"].tolist() + ids["val"].tolist()) == text
    assert encode("café") == [chars.index(c) for c in "café"]
    with pytest.raises(ValueError, match="'~\u1234'"):
        encode("ab~\u1234")


def test_split_and_ids_do_not_depend_on_the_chunk_size(tmp_path, monkeypatch):
    text = sample_text(30_000)
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    prepare.prepare(str(tmp_path / "t.txt"), str(tmp_path / "whole"), "char", 0.25)
    monkeypatch.setattr(prepare, "CHUNK_CHARS", 777)  # many chunks, and the split falls inside one
    prepare.prepare(str(tmp_path / "t.txt"), str(tmp_path / "chunked"), "char", 0.25)
    whole, _ = read_dataset(tmp_path / "whole")
    chunked, _ = read_dataset(tmp_path / "chunked")
    assert len(whole["val"]) == len(text) - int(len(text) * 0.75)
    for split in ("train", "val"):
        assert np.array_equal(whole[split], chunked[split])


@needs_gpt2_bpe
def test_gpt2_stream_equals_encoding_the_whole_text_at_once():
    import tiktoken
    enc = tiktoken.get_encoding("gpt2")
    rng = np.random.default_rng(0)
    alphabet = list("ab \n\n\t'sx.9") + ["  ", "\n \n", "'ll", "é"]
    for trial in range(20):
        text = "".join(rng.choice(alphabet, size=3000))
        cuts = sorted(rng.choice(len(text), size=rng.integers(1, 40), replace=False))
        pieces = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)])]
        streamed = [t for ids in prepare.bpe_encode_stream(pieces, enc, 2, "text", 0) for t in ids]
        assert streamed == enc.encode_ordinary(text), trial


@needs_gpt2_bpe
def test_gpt2_tokenizer(tmp_path):
    import tiktoken
    enc = tiktoken.get_encoding("gpt2")
    text = sample_text(20_000)
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    prepare_in(tmp_path, "--input=t.txt", "--tokenizer=gpt2", "--val_fraction=0.2")
    ids, meta = read_dataset(tmp_path / "data" / "t")
    assert meta == {"tokenizer": "gpt2", "vocab_size": 50257, "encoding": "gpt2"}
    n_train = int(len(text) * 0.8)
    assert ids["train"].tolist() == enc.encode_ordinary(text[:n_train])
    assert ids["val"].tolist() == enc.encode_ordinary(text[n_train:])
    encode, decode = tokenizer.make_codec(meta)
    assert decode(encode("Hello<|endoftext|>")) == "Hello<|endoftext|>"


@needs_shakespeare
def test_tiny_shakespeare_char_counts(tmp_path):
    folder = tmp_path / "data" / "shakespeare_char"
    folder.mkdir(parents=True)
    (folder / "input.txt").write_bytes(SHAKESPEARE.read_bytes())  # present: no download
    printed = prepare_in(tmp_path)
    assert "train has 1,003,854 tokens" in printed and "val has 111,540 tokens" in printed
    ids, meta = read_dataset(folder)
    assert meta["vocab_size"] == 65 and len(ids["train"]) == 1_003_854 and len(ids["val"]) == 111_540


@needs_shakespeare
@needs_gpt2_bpe
def test_tiny_shakespeare_gpt2_counts(tmp_path):
    printed = prepare_in(tmp_path, f"--input={SHAKESPEARE}", "--tokenizer=gpt2", "--dataset=shakespeare")
    assert "train has 301,966 tokens" in printed and "val has 36,059 tokens" in printed


def test_download_from_a_url(tmp_path, http_server):
    text = sample_text(8000)
    (tmp_path / "www" / "book.txt").write_text(text, encoding="utf-8")
    prepare_in(tmp_path, f"--input={http_server}/book.txt")
    folder = tmp_path / "data" / "book_char"
    assert (folder / "input.txt").read_text(encoding="utf-8") == text
    assert not list(folder.glob("*.part"))
    ids, _ = read_dataset(folder)
    assert len(ids["train"]) + len(ids["val"]) == len(text)


def test_missing_url_is_a_clean_error(tmp_path, http_server):
    user_error(lambda: prepare_in(tmp_path, f"--input={http_server}/missing.txt", "--dataset=web"),
               "could not download", "HTTP 404")
    assert not (tmp_path / "data" / "web" / "input.txt").exists()


def test_unreachable_url_is_a_clean_error(tmp_path):
    import socket
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    user_error(lambda: prepare_in(tmp_path, f"--input=http://127.0.0.1:{port}/input.txt"), "could not download",
               "refused")


@pytest.mark.parametrize("content, args, fragments", [
    (None, ["--input=nothere.txt"], ["'nothere.txt' not found"]),
    (b"", ["--input=t.txt"], ["is empty"]),
    (b"a", ["--input=t.txt"], ["too few to split"]),
    (b"hello \xff\xfe world\n" * 10, ["--input=t.txt"], ["not UTF-8", "0xff"]),
    (b"hello world\n" * 10, ["--input=t.txt", "--tokenizer=wordpiece"], ["unknown tokenizer 'wordpiece'"]),
    (b"hello world\n" * 10, ["--input=t.txt", "--val_fraction=1.5"], ["val_fraction"]),
    (b"hello world\n" * 10, ["--input=t.txt", "--tokeniser=char"], ["did you mean 'tokenizer'"]),
])
def test_bad_input_is_a_clean_error_and_keeps_existing_files(tmp_path, content, args, fragments):
    folder = tmp_path / "data" / "t_char"
    folder.mkdir(parents=True)
    old = {name: f"old {name}".encode() for name in ("train.bin", "val.bin", "meta.json")}
    for name, data in old.items():
        (folder / name).write_bytes(data)
    if content is not None:
        (tmp_path / "t.txt").write_bytes(content)
    user_error(lambda: prepare_in(tmp_path, *args, "--dataset=t_char"), *fragments)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == old


def test_vocabulary_beyond_uint16_is_refused(tmp_path):
    text = "".join(chr(0x10000 + i) for i in range(70_000))
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    user_error(lambda: prepare_in(tmp_path, "--input=t.txt"), "70000 distinct characters", "--tokenizer=gpt2")
    assert not list((tmp_path / "data" / "t_char").glob("*.bin*"))


# -----------------------------------------------------------------------------
# documents: .jsonl, .parquet and Hugging Face datasets

DOCUMENTS = [f"Document {i}: " + "hello world, " * (i % 4) + "naïve ☃\nthe end." for i in range(22)]
DOCUMENTS += ["", "Not special: <|endoftext|> is plain text inside a document."]


def write_jsonl(path, documents, **extra):
    path.write_text("".join(json.dumps({"text": text, **extra}) + "\n" for text in documents), encoding="utf-8")


def split_every_fifth(documents, encode):
    """The split of val_fraction=0.2, written out: documents 4, 9, 14, ... are val."""
    train, val = [], []
    for i, text in enumerate(documents):
        (val if i % 5 == 4 else train).extend(encode(text))
    return train, val


@needs_gpt2_bpe
@pytest.mark.slow
def test_jsonl_parquet_and_hf_documents_give_the_same_gpt2_tokens(tmp_path, monkeypatch):
    pq = pytest.importorskip("pyarrow.parquet")
    pytest.importorskip("datasets")
    import pyarrow as pa
    import tiktoken
    enc = tiktoken.get_encoding("gpt2")
    train, val = split_every_fifth(DOCUMENTS, lambda text: enc.encode_ordinary(text) + [enc.eot_token])
    write_jsonl(tmp_path / "docs.jsonl", DOCUMENTS, id=7)
    (tmp_path / "hub_docs").mkdir()  # a folder of data files is a dataset to the datasets package
    write_jsonl(tmp_path / "hub_docs" / "part-0.jsonl", DOCUMENTS)
    pq.write_table(pa.table({"id": range(len(DOCUMENTS)), "text": DOCUMENTS}), tmp_path / "docs.parquet")

    printed = prepare_in(tmp_path, "--input=docs.jsonl", "--tokenizer=gpt2", "--val_fraction=0.2")
    assert f"train has {len(train):,} tokens" in printed and "--dataset=docs" in printed
    result = run_script("prepare.py", "--input=hf:hub_docs", "--tokenizer=gpt2", "--val_fraction=0.2", cwd=tmp_path,
                        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert result.returncode == 0, result.stderr
    monkeypatch.setattr(prepare, "CHUNK_CHARS", 100)  # many batches of documents
    prepare.prepare(str(tmp_path / "docs.parquet"), str(tmp_path / "data" / "parquet"), "gpt2", 0.2)
    for name in ("docs", "hub_docs", "parquet"):
        ids, meta = read_dataset(tmp_path / "data" / name)
        assert meta == tokenizer.GPT2_SPEC
        assert ids["train"].tolist() == train and ids["val"].tolist() == val, name


def test_char_documents_from_a_url_end_with_a_newline(tmp_path, http_server):
    write_jsonl(tmp_path / "www" / "docs.jsonl", DOCUMENTS)
    prepare_in(tmp_path, f"--input={http_server}/docs.jsonl", "--val_fraction=0.2")
    folder = tmp_path / "data" / "docs_char"
    assert (folder / "input.jsonl").read_bytes() == (tmp_path / "www" / "docs.jsonl").read_bytes()
    ids, meta = read_dataset(folder)
    assert meta["chars"] == "".join(sorted(set("".join(DOCUMENTS) + "\n")))
    _, decode = tokenizer.make_codec(meta)
    train, val = split_every_fifth(DOCUMENTS, lambda text: list(text + "\n"))
    assert decode(ids["train"].tolist()) == "".join(train) and decode(ids["val"].tolist()) == "".join(val)


def write_parquet(path, **columns):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa
    pq.write_table(pa.table(columns), path)


@pytest.mark.parametrize("name, write, fragments", [
    ("d.jsonl", lambda p: p.write_text('{"text": "a"}\nnot json\n'), ["d.jsonl line 2 is not a JSON object"]),
    ("d.jsonl", lambda p: p.write_text('{"text": "a"}\n\n{"body": "b"}\n'), ["d.jsonl line 3 has no \"text\" string"]),
    ("d.jsonl", lambda p: write_jsonl(p, ["a"] * 9), ["has only 9 document(s), too few to split", "every 10"]),
    ("d.jsonl", lambda p: p.write_text(""), ["has no documents"]),
    ("d.parquet", lambda p: write_parquet(p, body=["a"] * 20), ["has no \"text\" column (its columns: body)"]),
    ("d.parquet", lambda p: write_parquet(p, text=["a", None] * 10), ["d.parquet row 1 has no \"text\" string"]),
    ("d.parquet", lambda p: p.write_bytes(b"PAR1 not really"), ["not a readable Parquet file"]),
])
def test_bad_documents_are_clean_errors_and_keep_existing_files(tmp_path, name, write, fragments):
    folder = tmp_path / "data" / "d_char"
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text("old")
    if name.endswith(".parquet"):
        pytest.importorskip("pyarrow")
    write(tmp_path / name)
    user_error(lambda: prepare_in(tmp_path, f"--input={name}", "--dataset=d_char"), *fragments)
    assert [p.name for p in folder.iterdir()] == ["meta.json"] and (folder / "meta.json").read_text() == "old"


@pytest.mark.parametrize("tokenizer", ["char", pytest.param("gpt2", marks=needs_gpt2_bpe), "bpe"])
def test_a_lone_surrogate_in_a_document_is_refused_with_its_line(tmp_path, tokenizer):
    """json.loads reads "\\ud800" as half a surrogate pair, which no tokenizer can encode."""
    (tmp_path / "d.jsonl").write_text('{"text": "caf\\u00e9 \\ud83d\\ude00"}\n{"text": "caf\\ud800"}\n' * 20)
    user_error(lambda: prepare_in(tmp_path, "--input=d.jsonl", f"--tokenizer={tokenizer}", "--vocab_size=257"),
               "d.jsonl line 2 has a lone surrogate ('\\ud800') in its \"text\"", "replace it with \\ufffd")
    assert not list((tmp_path / "data").rglob("*.bin"))


@pytest.mark.slow
def test_a_hugging_face_dataset_that_cannot_be_read_is_a_clean_error(tmp_path):
    pytest.importorskip("datasets")
    result = run_script("prepare.py", "--input=hf:nobody/nothing", "--tokenizer=gpt2", cwd=tmp_path,
                        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert_clean_error(result, "cannot read the Hugging Face dataset nobody/nothing")
    assert not list((tmp_path / "data" / "nothing").iterdir())


@pytest.mark.parametrize("module, input, fragment", [
    ("pyarrow.parquet", "d.parquet", "reading .parquet files needs pyarrow: pip install pyarrow"),
    ("datasets", "hf:some/dataset", "--input=hf:some/dataset needs the datasets package: pip install datasets"),
])
def test_missing_packages_for_documents_say_how_to_install_them(tmp_path, monkeypatch, module, input, fragment):
    monkeypatch.setitem(sys.modules, module, None)  # as if it were not installed
    (tmp_path / "d.parquet").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=re.escape(fragment)):
        prepare.prepare(input, str(tmp_path / "out"), "char", 0.1)
