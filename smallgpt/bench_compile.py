"""
bench.py's compile part: torch.compile against eager on this device, in one run, for the three jobs people run on
a CPU. Each figure counts the compile time, since that decides whether compile pays for a run of that length.

- compile_step(opts, compiled): the train part's step (nanoGPT's CPU model): the first step, compile included,
  and the median ms/iter after it.
- compile_eval(opts, model, share, compiled): HellaSwag's scoring (likelihood.py's forward passes, compiled or
  not) of a hellaswag_share: the first pass over it, compile included, and a second one.
- bench_compile(opts, work_dir): those, and the CPU recipe's train.py and sample.py's 2,000 tokens from its model,
  whole processes with --compile=False and --compile=True.
"""

import os
import sys
import time
from statistics import median
from types import SimpleNamespace

import torch

from smallgpt.bench_prepare import ROOT, run
from smallgpt.bench_quality import RECIPE, RECIPE_NAME, out_dir_of, recipe_runs
from smallgpt.bench_speed import make_step, shakespeare_examples
from smallgpt.checkpoint import load_checkpoint
from smallgpt.hellaswag import hellaswag_accuracy, hellaswag_share


def compile_step(opts, compiled, rounds=5):
    """(seconds of the first step, median ms/iter of the next rounds) of the train part's step."""
    step, _ = make_step(SimpleNamespace(**{**vars(opts), "compile": compiled}), nanogpt_optimizer=False)
    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(opts.steps_per_round):
            step()
        times.append((time.perf_counter() - t0) / opts.steps_per_round)
    return first, median(times) * 1000


def compile_eval(opts, model, share, compiled):
    """(seconds of a first pass over share, compile included, seconds of a second pass, acc_norm)."""
    if compiled:  # the forward passes that likelihood.py makes; dynamic: each batch has its own length
        model.hidden_states = torch.compile(model.hidden_states, dynamic=True)
    try:
        t0 = time.perf_counter()
        hellaswag_accuracy(model, share, opts.autocast)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        acc_norm = hellaswag_accuracy(model, share, opts.autocast)["acc_norm"]
        return first, time.perf_counter() - t0, acc_norm
    finally:
        if compiled:
            del model.hidden_states  # the class's own method again


def bench_compile(opts, work_dir):
    print(f"\n## compile: eager against torch.compile, {opts.dtype}, compile time counted")
    for compiled in (False, True):
        first, ms = compile_step(opts, compiled)
        print(f"train step, {opts.n_layer} x {opts.n_embd}, batch {opts.batch_size} x {opts.block_size}, "
              f"{'compiled' if compiled else 'eager':8s}: first step {first:5.2f}s, then {ms:6.2f} ms/iter")
    recipe_runs(opts, [(RECIPE_NAME, None, [RECIPE, "--device=cpu", "--compile=False"]),
                       (RECIPE_NAME + " --compile=True", None, [RECIPE, "--device=cpu", "--compile=True"])], work_dir)
    out_dir = os.path.join(work_dir, out_dir_of(RECIPE_NAME))
    for compiled in (False, True):
        _, wall = run([sys.executable, os.path.join(ROOT, "sample.py"), f"--out_dir={out_dir}", "--num_samples=1",
                       "--max_new_tokens=2000", f"--compile={compiled}", f"--seed={opts.seed}"], work_dir)
        print(f"sample.py, 2,000 tokens from the recipe's model, {'compiled' if compiled else 'eager':8s}: "
              f"{wall:5.2f}s, the whole process")
    model, tokenizer_spec = load_checkpoint(os.path.join(out_dir, "ckpt.pt"))
    share = hellaswag_share(shakespeare_examples(opts, opts.eval_examples), tokenizer_spec)
    for compiled in (False, True):
        first, second, acc_norm = compile_eval(opts, model.to(opts.device).eval(), share, compiled)
        print(f"HellaSwag scoring, {opts.eval_examples} examples, the recipe's model, "
              f"{'compiled' if compiled else 'eager':8s}: first pass {first:5.2f}s, second {second:5.2f}s "
              f"(acc_norm {acc_norm:.4f})")
