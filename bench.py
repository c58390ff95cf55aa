"""
Measure this repository beside the repositories people use today, on this machine, each figure beside a baseline
measured in the same run, so that a machine whose speed drifts (a shared cloud CPU) is compared with itself: speed
and memory (smallgpt/bench_speed.py, bench_prepare.py, bench_memory.py) and quality, val bits per byte for the
time taken (smallgpt/bench_quality.py) and a chat task's exact match (smallgpt/bench_chat.py). Each part's docstring
there says what it measures.

    python prepare.py && python bench.py      # train, recipe, sample and prepare: about 20 minutes on 2 cores
    python bench.py --part=train              # one part: train, sample, eval, prepare, memory, serve, compile (speed);
                                              # recipe, tokenizers, ablation, tune, finetune, chat (quality)
    python bench.py --part=recipe --recipe_repeats=3
    python bench.py --part=tune --recipe_repeats=3  # a search of an hour, then its best settings against the recipe
    python bench.py --part=recipe --device=cuda   # the GPU recipe against nanoGPT's GPU command
    python bench.py --part=train --device=cuda --n_layer=12 --n_head=12 --n_embd=768 --block_size=1024 \
        --vocab_size=50304 --compile=True      # GPT-2 124M steps on a GPU
    python bench.py --part=memory --n_layer=12 --n_head=12 --n_embd=768 --block_size=1024 --vocab_size=50304 \
        --batch_size=4                         # GPT-2 124M's peak memory with and without the memory features

The data: data/shakespeare_char as `python prepare.py` makes it; GPT-2's BPE files for the prepare part.
"""

import os
import platform
import sys
import tempfile
from types import SimpleNamespace

import torch

from smallgpt.bench_chat import bench_chat
from smallgpt.bench_compile import bench_compile
from smallgpt.bench_memory import bench_memory
from smallgpt.bench_prepare import bench_prepare
from smallgpt.bench_quality import (RECIPE_NAME, bench_ablation, bench_finetune, bench_recipe, bench_tokenizers,
                                    bench_tune, out_dir_of, working_folder)
from smallgpt.bench_serve import bench_serve
from smallgpt.bench_speed import bench_eval, bench_sample, bench_train
from smallgpt.configurator import configure
from smallgpt.devices import start_run
from smallgpt.errors import UserError

PARTS = ("all", "train", "recipe", "sample", "prepare", "tokenizers", "ablation", "eval", "tune", "memory", "finetune",
         "chat", "serve", "compile")

# -----------------------------------------------------------------------------
part = "all"  # any of PARTS above; 'all': train, recipe, sample and prepare
# the train part's model and batch: nanoGPT's CPU command
n_layer = 4  # [1, inf)
n_head = 4  # [1, inf)
n_embd = 128  # [1, inf)
block_size = 64  # [1, inf)
batch_size = 12  # [1, inf)
vocab_size = 65  # [1, inf)
rounds = 9  # [1, inf): rounds of timed steps; each figure is the median over rounds
recipe_repeats = 1  # [1, inf): runs of each recipe command, in turn, at seeds seed, seed + 1...: medians
char_megabytes = 200  # [1, inf): text sizes for the prepare part
gpt2_megabytes = 50  # [1, inf)
steps_per_round = 20  # [1, inf)
eval_examples = 500  # [1, inf): HellaSwag-shaped examples for the eval part
finetune_iters = 200  # [1, inf): the finetune part's steps of finetuning (and half as many again for the base)
finetune_megabytes = 2  # [1, inf): of the Python standard library's source code, for the finetune part
device = "auto"
dtype = "auto"  # one of auto, float32, bfloat16, float16
compile = False
seed = 1337  # [0, 4294967295]
# -----------------------------------------------------------------------------
config = configure(globals(), sys.argv[1:])
globals().update(config)
# -----------------------------------------------------------------------------


if part not in PARTS:
    raise UserError(f"unknown part '{part}': use {', '.join(PARTS)}")
if n_embd % n_head:
    raise UserError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head}): "
                    f"each head gets n_embd // n_head channels")
device, dtype, autocast, _, _ = start_run(device, dtype, seed)  # smallgpt/devices.py
device_type = device.split(":")[0]
opts = SimpleNamespace(**{**config, "device": device, "dtype": dtype}, device_type=device_type, autocast=autocast)


def machine():
    if device_type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    return f"{name}, {os.cpu_count()} cores"


print(f"# bench.py on {machine()}; torch {torch.__version__}, device {device}, dtype {dtype}")
with tempfile.TemporaryDirectory() as tmp:
    work_dir = working_folder(tmp) if part in ("all", "recipe", "tokenizers", "ablation", "tune", "chat",
                                               "compile") else None
    if part in ("all", "train"):
        bench_train(opts)
    if part in ("all", "recipe"):
        bench_recipe(opts, work_dir)
    if part in ("all", "sample"):  # after the recipes, from the character recipe's model
        bench_sample(opts, os.path.join(work_dir, out_dir_of(RECIPE_NAME)) if part == "all" else "out")
    if part in ("all", "prepare"):
        bench_prepare(opts)
    if part == "tokenizers":
        bench_tokenizers(opts, work_dir)
    if part == "ablation":
        bench_ablation(opts, work_dir)
    if part == "eval":
        bench_eval(opts, "out")
    if part == "tune":
        bench_tune(opts, work_dir)
    if part == "memory":
        bench_memory(opts)
    if part == "finetune":
        bench_finetune(opts, tmp)
    if part == "chat":
        bench_chat(opts, work_dir)
    if part == "serve":
        bench_serve(opts, tmp)
    if part == "compile":
        bench_compile(opts, work_dir)
