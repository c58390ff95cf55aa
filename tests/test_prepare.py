"""prepare.py: the splits and token ids, streaming, downloads, and clean failures on bad input."""

import functools
import http.server
import json
import threading

import numpy as np
import pytest

import prepare
from conftest import (SHAKESPEARE, assert_clean_error, needs_gpt2_bpe, needs_shakespeare, run_script,
                      sample_text)


def read_dataset(folder):
    ids = {split: np.memmap(folder / f"{split}.bin", dtype=np.uint16, mode="r") for split in ("train", "val")}
    return ids, json.loads((folder / "meta.json").read_text(encoding="utf-8"))


def nanogpt_char_split(text):
    """nanoGPT's way: the sorted characters are the vocabulary; the first 90% of characters are train."""
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    n = len(text)
    return chars, [stoi[c] for c in text[:int(n * 0.9)]], [stoi[c] for c in text[int(n * 0.9):]]


def test_char_level_matches_nanogpt_and_decodes_back(tmp_path):
    text = sample_text(5000) + "café ☃ naïve\n"
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    result = run_script("prepare.py", "--input=t.txt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "data/t_char" in result.stdout and "python train.py --dataset=t_char" in result.stdout
    ids, meta = read_dataset(tmp_path / "data" / "t_char")
    chars, train, val = nanogpt_char_split(text)
    assert meta == {"tokenizer": "char", "vocab_size": len(chars), "chars": "".join(chars)}
    assert ids["train"].tolist() == train and ids["val"].tolist() == val
    assert f"train has {len(train):,} tokens" in result.stdout
    encode, decode = prepare.make_codec(meta)
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
        streamed = [t for ids in prepare.gpt2_encode_stream(pieces, enc, n_threads=2) for t in ids]
        assert streamed == enc.encode_ordinary(text), trial


@needs_gpt2_bpe
def test_gpt2_tokenizer(tmp_path):
    import tiktoken
    enc = tiktoken.get_encoding("gpt2")
    text = sample_text(20_000)
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    result = run_script("prepare.py", "--input=t.txt", "--tokenizer=gpt2", "--val_fraction=0.2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    ids, meta = read_dataset(tmp_path / "data" / "t")
    assert meta == {"tokenizer": "gpt2", "vocab_size": 50257, "encoding": "gpt2"}
    n_train = int(len(text) * 0.8)
    assert ids["train"].tolist() == enc.encode_ordinary(text[:n_train])
    assert ids["val"].tolist() == enc.encode_ordinary(text[n_train:])
    encode, decode = prepare.make_codec(meta)
    assert decode(encode("Hello<|endoftext|>")) == "Hello<|endoftext|>"


@needs_shakespeare
def test_tiny_shakespeare_char_counts(tmp_path):
    folder = tmp_path / "data" / "shakespeare_char"
    folder.mkdir(parents=True)
    (folder / "input.txt").write_bytes(SHAKESPEARE.read_bytes())  # present: no download
    result = run_script("prepare.py", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "train has 1,003,854 tokens" in result.stdout and "val has 111,540 tokens" in result.stdout
    ids, meta = read_dataset(folder)
    assert meta["vocab_size"] == 65 and len(ids["train"]) == 1_003_854 and len(ids["val"]) == 111_540


@needs_shakespeare
@needs_gpt2_bpe
def test_tiny_shakespeare_gpt2_counts(tmp_path):
    result = run_script("prepare.py", f"--input={SHAKESPEARE}", "--tokenizer=gpt2", "--dataset=shakespeare",
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "train has 301,966 tokens" in result.stdout and "val has 36,059 tokens" in result.stdout


@pytest.fixture
def http_server(tmp_path):
    """A local HTTP server on 127.0.0.1 serving tmp_path/www; yields its base URL."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


def test_download_from_a_url(tmp_path, http_server):
    text = sample_text(8000)
    (tmp_path / "www" / "book.txt").write_text(text, encoding="utf-8")
    result = run_script("prepare.py", f"--input={http_server}/book.txt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "data" / "book_char"
    assert (folder / "input.txt").read_text(encoding="utf-8") == text
    assert not list(folder.glob("*.part"))
    ids, _ = read_dataset(folder)
    assert len(ids["train"]) + len(ids["val"]) == len(text)


def test_missing_url_is_a_clean_error(tmp_path, http_server):
    result = run_script("prepare.py", f"--input={http_server}/missing.txt", "--dataset=web", cwd=tmp_path)
    assert_clean_error(result, "could not download", "HTTP 404")
    assert not (tmp_path / "data" / "web" / "input.txt").exists()


def test_unreachable_url_is_a_clean_error(tmp_path):
    import socket
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = run_script("prepare.py", f"--input=http://127.0.0.1:{port}/input.txt", cwd=tmp_path)
    assert_clean_error(result, "could not download", "refused")


@pytest.mark.parametrize("content, args, fragments", [
    (None, ["--input=nothere.txt"], ["'nothere.txt' not found"]),
    (b"", ["--input=t.txt"], ["is empty"]),
    (b"a", ["--input=t.txt"], ["too few to split"]),
    (b"hello \xff\xfe world\n" * 10, ["--input=t.txt"], ["not UTF-8", "0xff"]),
    (b"hello world\n" * 10, ["--input=t.txt", "--tokenizer=bpe"], ["unknown tokenizer 'bpe'"]),
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
    result = run_script("prepare.py", *args, "--dataset=t_char", cwd=tmp_path)
    assert_clean_error(result, *fragments)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == old


def test_vocabulary_beyond_uint16_is_refused(tmp_path):
    text = "".join(chr(0x10000 + i) for i in range(70_000))
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    result = run_script("prepare.py", "--input=t.txt", cwd=tmp_path)
    assert_clean_error(result, "70000 distinct characters", "--tokenizer=gpt2")
    assert not list((tmp_path / "data" / "t_char").glob("*.bin*"))
