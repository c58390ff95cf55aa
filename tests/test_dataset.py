"""smallgpt/dataset.py: a data folder is checked before training starts, each failure one line naming the file."""

import json

import numpy as np
import pytest

from conftest import TINY, assert_clean_error, inside, run_script, user_error
from smallgpt.dataset import open_dataset


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
        assert open_dataset("shakespeare_char", block_size=32)[2] == record
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
