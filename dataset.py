"""
A prepared data folder, data/DATASET, as prepare.py writes it and train.py reads it: train.bin and val.bin (the
token ids as raw uint16) and meta.json (the tokenizer, see tokenizer.py).

- open_dataset: the folder's meta.json and the token count of each split, checked before training starts.
"""

import json
import os

from configurator import fail

SPLITS = ("train", "val")


def open_dataset(dataset, block_size):
    """(data_dir, meta, {split: tokens}) of data/DATASET; a one-line error if it cannot train with block_size."""
    data_dir = os.path.join("data", dataset)
    missing = [name for name in ("train.bin", "val.bin", "meta.json")
               if not os.path.exists(os.path.join(data_dir, name))]
    if missing:
        how = "python prepare.py"
        if dataset != "shakespeare_char":
            how += f" --input=YOUR_TEXT --dataset={dataset}"
        fail(f"dataset '{dataset}' is not prepared: {data_dir}/{missing[0]} is missing; make it with: {how}")
    with open(os.path.join(data_dir, "meta.json"), encoding="utf-8") as f:
        meta = json.load(f)
    split_tokens = {split: os.path.getsize(os.path.join(data_dir, f"{split}.bin")) // 2 for split in SPLITS}
    for split, n_tokens in split_tokens.items():
        if n_tokens <= block_size:
            fail(f"block_size={block_size} is too long for {data_dir}/{split}.bin, which has {n_tokens} tokens; "
                 f"use a smaller --block_size or more text")
    return data_dir, meta, split_tokens
