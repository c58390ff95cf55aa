"""
bench.py's memory part: the peak memory and the time of one training step of GPT-2 124M's shape (12 x 768,
vocabulary 50,304, block 1,024, batch 4; float32 on a CPU, the device's dtype on a GPU), each configuration in a
process of its own: nanoGPT's step (its optimizer, whole logits, every activation kept), ours as today, with
activation checkpointing, with the chunked loss, with both, and LoRA (rank 8, every matrix of the blocks) with
both. The peak is the process's peak resident memory on a CPU (Linux's VmHWM), torch.cuda.max_memory_allocated on
a GPU; the step's time is the second step's (the first allocates the optimizer's state). On a CPU each
configuration runs twice: as it is, and with glibc's malloc giving freed blocks back at once (MALLOC_MMAP_THRESHOLD_),
whose peak is the memory the step holds, without what the allocator keeps of freed blocks (most of the gap).

- bench_memory(opts): the table, with each figure's ratio to nanoGPT's.
- memory_step(settings): one configuration's two steps, in its own process; prints its figures.
"""

import json
import os
import sys
import time

import torch

from model import GPT, GPTConfig
from smallgpt.bench_prepare import ROOT, run
from smallgpt.devices import mixed_precision
from smallgpt.lora import add_adapters

CONFIGURATIONS = {  # name: (optimizer, activation checkpointing, chunked loss, LoRA rank)
    "nanoGPT's step": ("nanogpt", False, False, 0),
    "this repository, as it was": ("ours", False, False, 0),
    "activation checkpointing": ("ours", True, False, 0),
    "chunked loss": ("ours", False, True, 0),
    "both": ("ours", True, True, 0),
    "LoRA (rank 8) with both": ("ours", True, True, 8),
}
# the configuration in a process of its own, which prints "seconds PEAK_BYTES"
MEMORY_STEP = ("import json, sys; sys.path.insert(0, sys.argv[1]); from smallgpt.bench_memory import memory_step; "
               "memory_step(json.loads(sys.argv[2]))")


def bench_memory(opts):
    shape = dict(n_layer=opts.n_layer, n_head=opts.n_head, n_embd=opts.n_embd, block_size=opts.block_size,
                 vocab_size=opts.vocab_size)
    print(f"\n## memory: one training step of {opts.n_layer} layers x {opts.n_embd}, vocab {opts.vocab_size}, block "
          f"{opts.block_size}, batch {opts.batch_size}, {opts.dtype}; each configuration in its own process")
    rows = {}
    for name, (optimizer, checkpointing, chunked, rank) in CONFIGURATIONS.items():
        settings = dict(shape, batch_size=opts.batch_size, device=opts.device, dtype=opts.dtype, seed=opts.seed,
                        optimizer=optimizer, activation_checkpointing=checkpointing, chunked_loss=chunked,
                        lora_rank=rank)
        command = [sys.executable, "-c", MEMORY_STEP, ROOT, json.dumps(settings)]
        seconds, peak = (float(figure) for figure in run(command, cwd=ROOT)[0].split()[-2:])
        held = peak
        if opts.device_type == "cpu":
            held = float(run(command, cwd=ROOT, env={"MALLOC_MMAP_THRESHOLD_": "131072"})[0].split()[-1])
        rows[name] = seconds, peak, held
    base_seconds, base_peak, base_held = rows["nanoGPT's step"]
    for name, (seconds, peak, held) in rows.items():
        print(f"{name:28s} peak {peak / 2**20:6,.0f} MB ({peak / base_peak:4.2f}x), held {held / 2**20:6,.0f} MB "
              f"({held / base_held:4.2f}x)  step {seconds:6.2f}s ({seconds / base_seconds:4.2f}x)")


def memory_step(settings):
    """Two training steps of the configuration in settings; prints the second's seconds and the peak in bytes."""
    device, dtype = settings["device"], settings["dtype"]
    device_type = device.split(":")[0]
    torch.manual_seed(settings["seed"])
    torch.set_float32_matmul_precision("high")
    shape = {key: settings[key] for key in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")}
    model = GPT(GPTConfig(**shape, bias=False, dropout=0.0, activation="gelu"))  # train.py's defaults
    if settings["lora_rank"]:
        add_adapters(model, settings["lora_rank"], 16.0, 0.0, ("attn.c_attn", "attn.c_proj", "mlp.c_fc",
                                                               "mlp.c_proj"))
    model.to(device)
    model.activation_checkpointing, model.chunked_loss = settings["activation_checkpointing"], settings["chunked_loss"]
    optimizer = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), device_type)
    if settings["optimizer"] == "nanogpt":  # the same groups, fused only on CUDA
        groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in optimizer.param_groups]
        optimizer = torch.optim.AdamW(groups, lr=6e-4, betas=(0.9, 0.95), fused=device_type == "cuda")
    autocast = mixed_precision(device_type, dtype)
    x = torch.randint(settings["vocab_size"], (settings["batch_size"], settings["block_size"]), device=device)
    y = torch.roll(x, -1, dims=1)
    for _ in range(2):
        if device_type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with autocast:
            _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device_type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    if device_type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        with open("/proc/self/status") as f:
            peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))
    print(seconds, peak)
    sys.stdout.flush()
    os._exit(0)  # nothing to tear down: the process was only for these figures
