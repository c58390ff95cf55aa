"""smallgpt/dataset.py: a data folder is checked before training starts, each failure one line naming the file."""

import json
import sys

import numpy as np
import pytest
import torch

from conftest import (TINY, assert_clean_error, inside, needs_gpt2_bpe, prepare_in, run_script, sample_text,
                      user_error)
from smallgpt.dataset import loss_sums, open_dataset
from smallgpt.tokenizer import GPT2_TOKEN_BYTES


def files_in(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def edit_meta(folder, change):
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    change(meta)
    (folder / "meta.json").write_text(json.dumps(meta), encoding="utf-8")


def smaller_vocabulary(meta):
    meta["chars"], meta["vocab_size"] = meta["chars"][:10], 10


REMAKE = "make the folder again with: python prepare.py"


@pytest.mark.parametrize("damage, fragments", [
    (lambda d: (d / "meta.json").write_text("{not json"),
     ["data/shakespeare_char/meta.json is not valid JSON", REMAKE]),
    (lambda d: (d / "meta.json").write_bytes(b"\xff\xfe"), ["meta.json is not valid JSON"]),
    (lambda d: (d / "meta.json").write_text("[1, 2]"), ["meta.json does not describe a tokenizer", REMAKE]),
    (lambda d: edit_meta(d, lambda m: m.pop("vocab_size")), ["meta.json has a \"vocab_size\" of None"]),
    (lambda d: edit_meta(d, lambda m: m.pop("chars")), ["meta.json needs \"chars\""]),
    (lambda d: edit_meta(d, lambda m: m.update(tokenizer="gpt2")), ["describes GPT-2's BPE but not as GPT-2 has it"]),
    (lambda d: edit_meta(d, smaller_vocabulary),
     ["data/shakespeare_char/train.bin holds token id", "beyond the 10 ids"]),
    (lambda d: open(d / "train.bin", "ab").write(b"\x00"), ["train.bin has 72001 bytes, not a whole number of uint16"]),
    (lambda d: open(d / "val.bin", "ab").write(b"\x00\x00"),
     ["val.bin holds 4001 token ids, but data/shakespeare_char/meta.json says 4000", REMAKE]),
])
def test_a_damaged_data_folder_is_a_clean_error_and_stays_as_it_was(char_data, damage, fragments):
    folder = char_data / "data" / "shakespeare_char"
    damage(folder)
    before = files_in(folder)
    with inside(char_data):
        user_error(lambda: open_dataset("shakespeare_char", block_size=32), *fragments)
    assert files_in(folder) == before


@pytest.mark.slow
def test_train_py_checks_the_data_folder_before_it_starts(char_data):
    open(char_data / "data" / "shakespeare_char" / "val.bin", "ab").write(b"\x00\x00")
    assert_clean_error(run_script("train.py", *TINY, "--max_iters=2", cwd=char_data),
                       "val.bin holds 4001 token ids, but data/shakespeare_char/meta.json says 4000", REMAKE)


def test_a_folder_prepared_without_the_record_is_counted_once_and_recorded(char_data):
    folder = char_data / "data" / "shakespeare_char"
    record = json.loads((folder / "meta.json").read_text(encoding="utf-8"))["splits"]
    max_id = int(np.fromfile(folder / "val.bin", np.uint16).max())
    assert record["val"] == {"tokens": 4000, "bytes": 4000, "max_id": max_id}
    edit_meta(folder, lambda m: m.pop("splits"))
    with inside(char_data):
        open_dataset("shakespeare_char", block_size=32)
    assert json.loads((folder / "meta.json").read_text(encoding="utf-8"))["splits"] == record
    # ids beyond the vocabulary are found the same way, in a folder without the record
    edit_meta(folder, lambda m: (m.pop("splits"), smaller_vocabulary(m)))
    with inside(char_data):
        user_error(lambda: open_dataset("shakespeare_char", block_size=32), "beyond the 10 ids")


@pytest.mark.slow
def test_train_py_trains_on_a_folder_prepared_without_the_record(char_data):
    folder = char_data / "data" / "shakespeare_char"
    record = json.loads((folder / "meta.json").read_text(encoding="utf-8"))["splits"]
    edit_meta(folder, lambda m: m.pop("splits"))
    result = run_script("train.py", *TINY, "--max_iters=2", "--eval_interval=2", cwd=char_data)
    assert result.returncode == 0, result.stderr
    assert json.loads((folder / "meta.json").read_text(encoding="utf-8"))["splits"] == record


def test_an_empty_split_in_a_folder_without_the_record_is_too_short(char_data):
    folder = char_data / "data" / "shakespeare_char"
    edit_meta(folder, lambda m: m.pop("splits"))
    (folder / "val.bin").write_bytes(b"")
    with inside(char_data):
        user_error(lambda: open_dataset("shakespeare_char", block_size=32),
                   "block_size=32 is too long for data/shakespeare_char/val.bin, which has 0 tokens")


@needs_gpt2_bpe
def test_a_gpt2_folder_without_the_record_needs_no_bpe_files(tmp_path, monkeypatch):
    """Folders made before the record was kept are counted with gpt2_token_bytes.npy, not with tiktoken's files."""
    import tiktoken
    enc = tiktoken.get_encoding("gpt2")
    table = np.load(GPT2_TOKEN_BYTES, allow_pickle=False)
    assert table.tolist() == [0 if i == enc.eot_token else len(enc.decode_single_token_bytes(i))
                              for i in range(enc.n_vocab)]
    (tmp_path / "t.txt").write_text(sample_text(20_000), encoding="utf-8")
    prepare_in(tmp_path, "--input=t.txt", "--tokenizer=gpt2")
    folder = tmp_path / "data" / "t"
    record = json.loads((folder / "meta.json").read_text(encoding="utf-8"))["splits"]
    edit_meta(folder, lambda m: m.pop("splits"))
    monkeypatch.setitem(sys.modules, "tiktoken", None)  # as if its BPE files could not be had
    with inside(tmp_path):
        open_dataset("t", block_size=32)
    assert json.loads((folder / "meta.json").read_text(encoding="utf-8"))["splits"] == record


@pytest.mark.slow
def test_an_id_beyond_the_vocabulary_written_after_prepare_is_caught_in_a_batch(char_data):
    """meta.json's record says the ids are fine; the batch that meets the changed file says otherwise."""
    path = char_data / "data" / "shakespeare_char" / "train.bin"
    np.full(path.stat().st_size // 2, 999, dtype=np.uint16).tofile(path)
    assert_clean_error(run_script("train.py", *TINY, "--max_iters=2", cwd=char_data),
                       "data/shakespeare_char/train.bin holds token id 999, beyond the", "make the folder again")


def test_bits_per_byte_count_the_tokens_that_carry_text_alone():
    """As nanochat counts: <|endoftext|> stands for no text, so neither its loss nor any bytes count."""
    byte_lengths = torch.tensor([1, 2, 4, 0])  # token 3 is <|endoftext|>
    targets = torch.tensor([[0, 1, 3], [2, 3, 0]])
    loss, nats, nbytes, count = loss_sums(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), targets, byte_lengths)
    assert (loss.item(), nats.item(), nbytes.item(), count.item()) == (21.0, 1.0 + 2.0 + 4.0 + 6.0, 1 + 2 + 4 + 1, 6)
    # a chat dataset's targets of -1, not a reply's, are not scored (their loss is 0, as cross_entropy gives it)
    targets[0, 1] = -1
    loss, nats, nbytes, count = loss_sums(torch.tensor([1.0, 0.0, 3.0, 4.0, 5.0, 6.0]), targets, byte_lengths)
    assert (loss.item(), nats.item(), nbytes.item(), count.item()) == (19.0, 1.0 + 4.0 + 6.0, 1 + 4 + 1, 5)
