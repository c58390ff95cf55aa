"""
A prepared data folder, data/DATASET, as prepare.py writes it and train.py reads it: train.bin and val.bin (the
token ids as raw uint16) and meta.json: the tokenizer spec (see tokenizer.py) and, under "splits", what each
split holds: its tokens, the UTF-8 bytes of its text, and its largest token id. Conversations (their spec has a
chat template, see conversations.py) have train_mask.bin and val_mask.bin too: a uint8 for each token, which marks
the first token of each conversation and the replies' tokens, the ones trained on.

- open_dataset: the folder, checked before training starts: meta.json whole, each .bin a whole number of ids
  that matches meta.json, and no id beyond the vocabulary. Each failure is a UserError that names the file and
  the command that makes the folder again.
- count_ids, split_stats: what meta.json records of a split, from its token ids.
- check_ids: the ids of a batch, checked against the vocabulary (a .bin may change while a run reads it).
- loss_sums: a batch's sums for its loss and bits per byte of text, which compare tokenizers on one scale.
- chat_rows: a batch of a chat dataset: rows that start at conversations, trained on the replies alone.
"""

import functools
import json
import os

import numpy as np
from tqdm import tqdm

from smallgpt.conversations import MASK_START, MASK_TRAINED
from smallgpt.errors import UserError
from smallgpt.files import replaced_atomically
from smallgpt.tokenizer import token_bytes, tokenizer_problem

SPLITS = ("train", "val")
CHUNK_IDS = 1 << 24  # ids counted at a time when a folder is checked
PREPARE_FLAGS = {"shakespeare_char": "", "shakespeare": " --tokenizer=gpt2", "shakespeare_bpe": " --tokenizer=bpe"}


def open_dataset(dataset, block_size):
    """(data_dir, tokenizer spec) of data/DATASET, checked (see above)."""
    data_dir = os.path.join("data", dataset)
    remake = "python prepare.py" + PREPARE_FLAGS.get(dataset, f" --input=YOUR_TEXT --dataset={dataset}")
    paths = {name: os.path.join(data_dir, name) for name in ("train.bin", "val.bin", "meta.json")}
    missing = [path for path in paths.values() if not os.path.exists(path)]
    if missing:
        raise UserError(f"dataset '{dataset}' is not prepared: {missing[0]} is missing; make it with: {remake}")
    try:
        with open(paths["meta.json"], encoding="utf-8") as f:
            meta = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{paths['meta.json']} is not valid JSON ({e}); make the folder again with: {remake}") from None
    problem = tokenizer_problem(meta)
    if problem:
        raise UserError(f"{paths['meta.json']} {problem}; make the folder again with: {remake}")
    for split in SPLITS:
        size = os.path.getsize(paths[f"{split}.bin"])
        if size % 2:
            raise UserError(f"{paths[f'{split}.bin']} has {size} bytes, not a whole number of uint16 token ids: "
                            f"it is cut short or not a token file; make the folder again with: {remake}")
    tokenizer_spec = {key: value for key, value in meta.items() if key != "splits"}
    if not has_split_record(meta):  # prepared before the record was kept: count the ids once, and keep it
        from smallgpt.devices import is_master_process  # here only: prepare.py imports this file, not torch
        meta["splits"] = {split: split_stats(count_ids(paths[f"{split}.bin"]), tokenizer_spec) for split in SPLITS}
        if is_master_process() and os.access(data_dir, os.W_OK):  # one process writes it
            with replaced_atomically(paths["meta.json"], what="meta.json") as [tmp]:
                with open(tmp, "w", encoding="utf-8") as f:
                    json.dump(meta, f, ensure_ascii=False)
    for split, stats in meta["splits"].items():
        path, n_tokens = paths[f"{split}.bin"], os.path.getsize(paths[f"{split}.bin"]) // 2
        mask_path = os.path.join(data_dir, f"{split}_mask.bin")  # a chat dataset's: which tokens train
        if "chat" in tokenizer_spec and (not os.path.isfile(mask_path) or os.path.getsize(mask_path) != n_tokens):
            raise UserError(f"{mask_path} is missing, or is not one byte for each of {path}'s {n_tokens} tokens: the "
                            f"files come from different runs of prepare.py; make the folder again with: {remake}")
        if n_tokens != stats["tokens"]:
            raise UserError(f"{path} holds {n_tokens} token ids, but {paths['meta.json']} says {stats['tokens']}: "
                            f"the files come from different runs of prepare.py; make the folder again with: {remake}")
        if stats["max_id"] >= tokenizer_spec["vocab_size"]:
            raise UserError(f"{path} holds token id {stats['max_id']}, beyond the {tokenizer_spec['vocab_size']} "
                            f"ids of the tokenizer in {paths['meta.json']}; make the folder again with: {remake}")
        if n_tokens <= block_size:
            raise UserError(f"block_size={block_size} is too long for {path}, which has {n_tokens} tokens; "
                            f"use a smaller --block_size or more text")
    return data_dir, tokenizer_spec


def has_split_record(meta):
    """Whether meta.json's "splits" is a whole record of both splits."""
    splits = meta.get("splits")
    return (isinstance(splits, dict) and set(splits) == set(SPLITS) and
            all(isinstance(stats, dict) and all(type(stats.get(key)) is int for key in ("tokens", "bytes", "max_id"))
                for stats in splits.values()))


def count_ids(path):
    """How often each uint16 id occurs in a .bin file, read in chunks with a progress bar."""
    counts = np.zeros(65536, dtype=np.int64)
    if os.path.getsize(path) == 0:  # which np.memmap cannot map
        return counts
    ids = np.memmap(path, dtype=np.uint16, mode="r")
    for start in tqdm(range(0, len(ids), CHUNK_IDS), desc=f"checking {path}", unit=" chunks", disable=None):
        counts += np.bincount(ids[start:start + CHUNK_IDS], minlength=65536)
    return counts


def split_stats(counts, tokenizer_spec):
    """A split's record in meta.json from how often each id occurs: tokens, bytes of text, the largest id."""
    lengths = token_bytes(tokenizer_spec)
    present = np.flatnonzero(counts)
    return {"tokens": int(counts.sum()), "bytes": int(counts[:len(lengths)] @ lengths),
            "max_id": int(present[-1]) if len(present) else -1}


def check_ids(path, vocab_size, *batches):
    """UserError if batches of ids read from path hold one beyond the vocabulary: the file changed since checked."""
    largest = max(int(ids.max()) for ids in batches)
    if largest >= vocab_size:
        raise UserError(f"{path} holds token id {largest}, beyond the {vocab_size} ids of its tokenizer: it changed "
                        f"after prepare.py wrote it; make the folder again with python prepare.py")


def loss_sums(token_losses, targets, byte_lengths):
    """
    (the loss of every scored token, the loss of those that carry bytes, their bytes, how many were scored) of a
    batch, summed, from each token's loss and the UTF-8 length of each token id's text; a target of -1 (in a chat
    dataset, a token that is not a reply's) is not scored. Bits per byte are the second over ln 2 and the third,
    as nanochat counts them: <|endoftext|>, which stands for no text, counts in neither.
    """
    targets = targets.view(-1)
    scored = targets != -1
    nbytes = byte_lengths[targets.clamp(min=0)] * scored
    return token_losses.sum(), (token_losses * (nbytes > 0)).sum(), nbytes.sum(), scored.sum().float()


@functools.lru_cache(maxsize=4)
def conversation_starts(mask_path):
    """The position of the first token of each conversation in a chat dataset's split, from its mask."""
    return np.flatnonzero(np.memmap(mask_path, dtype=np.uint8, mode="r") == MASK_START)


def chat_rows(data, mask_path, rng, n, block_size):
    """
    (x, y) (n, block_size) int64 of a chat dataset's split: each row from the start of a conversation that rng
    draws, on through the ones after it (packed, the last cut where the row ends; past the end of the file, padded);
    y is -1 where the target is not a reply's token, so that only the replies are trained on and scored.
    """
    mask = np.memmap(mask_path, dtype=np.uint8, mode="r")
    starts = conversation_starts(mask_path)
    positions = starts[rng.integers(0, len(starts), size=n)][:, None] + np.arange(block_size + 1)  # (n, T+1)
    inside = positions < len(data)
    positions = np.minimum(positions, len(data) - 1)
    windows = data[positions].astype(np.int64)
    targets = np.where(inside & (mask[positions] == MASK_TRAINED), windows, -1)
    return np.ascontiguousarray(windows[:, :-1]), np.ascontiguousarray(targets[:, 1:])
