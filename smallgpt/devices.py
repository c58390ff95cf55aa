"""
The device and the number format a script runs in, for train.py, sample.py, eval.py and bench.py.

- start_run(device, dtype, seed, backend), end_run(): what every script sets up first and tears down last: the
  device and dtype, the seed, the autocast context, and under torchrun the process group.
- launched_by_torchrun, is_master_process: whether torchrun started this process, and whether it is the one that
  logs and writes (rank 0, or the only one); both read torchrun's environment, so they hold before start_run.
- resolve_device, resolve_dtype: the 'auto' settings made concrete, or a one-line error for a device or dtype
  that this machine does not have.
- join_processes: under torchrun, this process's rank and device, its process group started.
- mixed_precision: the autocast context for a dtype.
- peak_flops: a device's peak FLOP/s, against which MFU is measured.
"""

import os
import time
from contextlib import nullcontext

import torch
import torch.distributed as dist

from smallgpt.errors import UserError


def start_run(device, dtype, seed, backend="auto"):
    """
    (device, dtype, autocast, rank, world size): 'auto' made concrete, under torchrun with the process group up (a
    GPU or a share of the cores each); torch seeded (the same in every process), TF32 matmuls on Ampere and later.
    """
    device, rank, world_size = resolve_device(device), 0, 1
    if launched_by_torchrun():
        device, rank, _, world_size = join_processes(device, backend)
    device_type = device.split(":")[0]
    dtype = resolve_dtype(dtype, device_type)
    torch.manual_seed(seed)
    torch.set_float32_matmul_precision("high")
    return device, dtype, mixed_precision(device_type, dtype), rank, world_size


def end_run():
    """Under torchrun: every process waits for the others, then leaves the process group, which none still uses."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def launched_by_torchrun():
    return int(os.environ.get("RANK", -1)) != -1


def is_master_process():
    return int(os.environ.get("RANK", 0)) == 0


def resolve_device(device):
    """'auto' -> the best device here (cuda, then mps, then cpu); anything else is checked to exist."""
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    kind, _, index = device.partition(":")
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"device '{device}' is not available: this machine has no CUDA GPU that torch can use; "
                            f"use --device=cpu (or leave device to 'auto')")
        if index and (not index.isdigit() or int(index) >= count):
            raise UserError(f"device '{device}' is not available: this machine has {count} CUDA GPU(s), "
                            f"cuda:0 to cuda:{count - 1}")
    elif kind == "mps":
        if not torch.backends.mps.is_available():
            raise UserError(f"device '{device}' is not available: MPS needs an Apple-silicon Mac; use --device=cpu")
    elif device != "cpu":
        raise UserError(f"unknown device '{device}': use auto, cpu, cuda, cuda:N or mps")
    return device


def resolve_dtype(dtype, device_type):
    """'auto' -> what the device runs fast: bfloat16 on CUDA where supported, else float16 there; float32 elsewhere."""
    if dtype == "auto":
        if device_type == "cuda":
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        return "float32"
    if dtype == "bfloat16" and device_type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("this GPU does not support bfloat16: use --dtype=float16")
    return dtype


def join_processes(device, backend="auto"):
    """
    (device, rank, local rank, world size) of this process among those that torchrun started, once their process
    group is up: each process takes its own GPU, or a share of this machine's cores.
    """
    rank, local_rank, world_size = (int(os.environ[key]) for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    if device.startswith("cuda"):
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    else:  # share the cores among the processes on this machine instead of oversubscribing them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["LOCAL_WORLD_SIZE"])))
    if backend == "auto":
        backend = "nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(backend=backend)
    return device, rank, local_rank, world_size


def mixed_precision(device_type, dtype):
    """The context to run a model in at dtype (a name that resolve_dtype returned): mixed precision below float32."""
    if dtype == "float32":
        return nullcontext()
    return torch.amp.autocast(device_type=device_type, dtype=getattr(torch, dtype))


def peak_flops(device, dtype):
    """
    Peak FLOP/s of one device at dtype ('float32', 'bfloat16', 'float16'), for MFU: the data sheet's dense
    figure for GPUs; on a CPU, the best of several 1024 x 1024 matrix products, measured now.
    """
    device_type = device.split(":")[0]
    if device_type == "cuda":
        name = torch.cuda.get_device_name(device)
        # dense bf16/fp16 tensor-core peaks, from the vendors' data sheets
        table = [("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12), ("L4", 121e12),
                 ("4090", 165e12), ("A10", 125e12), ("V100", 125e12), ("T4", 65e12)]
        peak = next((flops for key, flops in table if key in name), 312e12)
        return peak if dtype != "float32" else peak / 2  # TF32 runs at half the 16-bit rate
    if device_type == "mps":
        return 10e12  # roughly an M-series GPU's fp32 peak
    a = torch.full((1024, 1024), 0.5, dtype=getattr(torch, dtype))  # not random: the RNG state belongs to training
    best, start = 0.0, time.perf_counter()
    # the best of up to 32 products (the first run slow while the cores wake up), for half a second at most: where
    # a dtype has no fast kernels (bfloat16 or float16 on many CPUs), one product takes seconds
    for _ in range(32):
        t = time.perf_counter()
        a @ a
        best = max(best, 2 * 1024**3 / (time.perf_counter() - t))
        if time.perf_counter() - start > 0.5:
            break
    return best
