"""
Measure this repository's speed on this machine, each figure beside a baseline measured in the same run, so
that a machine whose speed drifts (a shared cloud CPU) is compared with itself.

    python prepare.py && python bench.py      # train, recipe, sample and prepare: about 20 minutes on 2 cores
    python bench.py --part=train              # one part: train, recipe, sample, prepare, tokenizers, ablation,
                                              # eval, tune
    python bench.py --part=recipe --recipe_repeats=3
    python bench.py --part=tune --recipe_repeats=3  # a search of an hour, then its best settings against the recipe
    python bench.py --part=recipe --device=cuda   # the GPU recipe against nanoGPT's GPU command
    python bench.py --part=train --device=cuda --n_layer=12 --n_head=12 --n_embd=768 --block_size=1024 \
        --vocab_size=50304 --compile=True      # GPT-2 124M steps on a GPU

- train: ms/iter, tokens/s and MFU of a training step (forward, backward, gradient clipping, optimizer step),
  by default on nanoGPT's CPU model (4 layers x 128, block 64, batch 12, exact GELU, no biases), against the
  same step with nanoGPT's optimizer (PyTorch's fused AdamW only on CUDA), and the step's matrix products
  alone, which bound what the step can reach. MFU is against the device's peak: on a CPU, an fp32 matrix
  product timed before every round of steps.
- recipe: config/shakespeare_char_cpu.py and config/shakespeare_bpe_cpu.py (with prepare.py --tokenizer=bpe)
  against nanoGPT's CPU command, each run through train.py: wall time of the whole processes, final and best val
  loss and bits per byte. With --device=cuda, the GPU recipe (config/shakespeare_char.py) against nanoGPT's GPU
  command (its config/train_shakespeare_char.py, compiled).
- sample: tokens/s of greedy generation without the KV cache (the whole context through the model for every
  token, as nanoGPT does), with it, and with it as sample.py runs on a CPU (the weights stored transposed,
  ATen's GELU in place of oneDNN's), on a 6 x 6 x 384 model with GPT-2's vocabulary, 64 new tokens after a
  256-token prompt; then 2,000 tokens with sample.py's settings from the recipe's checkpoint (the recipe
  part's, or out/ckpt.pt).
- prepare: MB/s and peak memory of prepare.py on 200 MB of text at character level and 50 MB with GPT-2's BPE
  (Tiny Shakespeare repeated), against nanoGPT's way (the whole text in memory, a Python dict per character,
  tiktoken's encode_ordinary on one core), each timed as a whole process; both must write the same token ids.
  Then a learned BPE on both files: learning, then encoding; then GPT-2's BPE on 200 MB of the text laid out as
  paragraphs with blank lines between them and every line indented.
- tokenizers (not part of 'all'): characters, learned BPEs of 512, 1024 and 2048 tokens, and GPT-2's BPE, each
  with the best CPU settings found, in val bits per byte and the wall time of prepare.py and train.py.
- ablation (not part of 'all'): the character recipe with one of its parts taken out at a time.
- tune (not part of 'all'): a search with tune.py from config/tune_shakespeare_char_cpu.py (an hour on 2
  cores), then its best.py trained again, evaluated as the recipe is (once at the end, on 20 batches), against
  config/shakespeare_char_cpu.py, recipe_repeats seeds each; and tune.py's cost per trial beside train.py's own.
- eval (not part of 'all'): examples/s of HellaSwag's scoring as eval.py does it (many examples in padded
  batches) against build-nanogpt's way (one example's four endings at a time), on HellaSwag-shaped examples cut
  from Tiny Shakespeare: with a 6 x 384 model with GPT-2's vocabulary, then with out/ckpt.pt if there is one.
The data: data/shakespeare_char as `python prepare.py` makes it; GPT-2's BPE files for the prepare part.
"""

import copy
import csv
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from model import GPT, GPTConfig, sample_next
from smallgpt.checkpoint import load_checkpoint
from smallgpt.configurator import configure, defaults_of
from smallgpt.devices import mixed_precision, peak_flops, resolve_device, resolve_dtype
from smallgpt.errors import UserError
from smallgpt.hellaswag import hellaswag_accuracy, hellaswag_set
from smallgpt.likelihood import window
from smallgpt.metrics import read_metrics
from smallgpt.tokenizer import GPT2_SPEC

# -----------------------------------------------------------------------------
part = "all"  # 'all' (train, recipe, sample, prepare), one of those, or 'tokenizers', 'ablation', 'eval', 'tune'
# the train part's model and batch: nanoGPT's CPU command
n_layer = 4
n_head = 4
n_embd = 128
block_size = 64
batch_size = 12
vocab_size = 65
rounds = 9  # rounds of timed steps; each figure is the median over rounds
recipe_repeats = 1  # runs of each recipe command, in turn, at seeds seed, seed + 1, ...; figures are medians
char_megabytes = 200  # text sizes for the prepare part
gpt2_megabytes = 50
steps_per_round = 20
eval_examples = 500  # HellaSwag-shaped examples for the eval part
device = "auto"
dtype = "auto"
compile = False
seed = 1337
# -----------------------------------------------------------------------------
globals().update(configure(defaults_of(globals()), sys.argv[1:]))
# -----------------------------------------------------------------------------

if n_embd % n_head:
    raise UserError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head}): "
                    f"each head gets n_embd // n_head channels")
device = resolve_device(device)
device_type = device.split(":")[0]
dtype = resolve_dtype(dtype, device_type)
autocast = mixed_precision(device_type, dtype)
ROOT = os.path.dirname(os.path.abspath(__file__))
DATA_DIR = os.path.join("data", "shakespeare_char")
RECIPE = os.path.join(ROOT, "config", "shakespeare_char_cpu.py")
TUNE_CONFIG = os.path.join(ROOT, "config", "tune_shakespeare_char_cpu.py")
RECIPE_NAME = "config/shakespeare_char_cpu.py"
GPU_RECIPE = os.path.join(ROOT, "config", "shakespeare_char.py")
BPE_RECIPE = os.path.join(ROOT, "config", "shakespeare_bpe_cpu.py")
# nanoGPT's config/train_shakespeare_char.py spelled out; its CPU command (from its README) adds flags to it
NANOGPT_CONFIG = ["--eval_interval=250", "--eval_iters=200", "--log_interval=10", "--always_save_checkpoint=False",
                  "--batch_size=64", "--block_size=256", "--n_layer=6", "--n_head=6", "--n_embd=384", "--dropout=0.2",
                  "--learning_rate=1e-3", "--max_iters=5000", "--lr_decay_iters=5000", "--min_lr=1e-4", "--beta2=0.99",
                  "--warmup_iters=100"]
NANOGPT_CPU = NANOGPT_CONFIG + ["--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1",
                                "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128",
                                "--max_iters=2000", "--lr_decay_iters=2000", "--dropout=0.0"]
NANOGPT_GPU = NANOGPT_CONFIG + ["--compile=True"]  # nanoGPT's `python train.py config/train_shakespeare_char.py`


def synchronize():
    if device_type == "cuda":
        torch.cuda.synchronize()


def median(values):
    return float(np.median(values))


def machine():
    if device_type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    return f"{name}, {os.cpu_count()} cores"


# -----------------------------------------------------------------------------
# train: the step of train.py, timed in rounds against the device's peak

def make_step(nanogpt_optimizer):
    """A training step of a fresh model on fixed batches of Tiny Shakespeare; returns (step, FLOPs per step)."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size,
                          vocab_size=vocab_size, bias=False, dropout=0.0, activation="gelu")).to(device)
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), device_type)
    if nanogpt_optimizer:  # the same groups, fused only on CUDA (elsewhere a loop over the tensors)
        groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in optimizer.param_groups]
        optimizer = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.99), fused=device_type == "cuda")
    scaler = torch.amp.GradScaler(device_type, enabled=dtype == "float16")
    forward = torch.compile(model) if compile else model
    data = np.memmap(os.path.join(DATA_DIR, "train.bin"), dtype=np.uint16, mode="r")
    starts = np.random.default_rng(seed).integers(0, len(data) - block_size, size=batch_size)
    windows = torch.from_numpy(data[starts[:, None] + np.arange(block_size + 1)].astype(np.int64)) % vocab_size
    x, y = windows[:, :-1].contiguous().to(device), windows[:, 1:].contiguous().to(device)

    def step():
        with autocast:
            _, loss = forward(x, y)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    return step, model.flops_per_token() * block_size * batch_size


def make_matmuls():
    """
    The step's matrix products alone, back to back (each Linear's forward product and its two backward ones),
    credited with the whole step's FLOPs: the MFU the step would reach if nothing else took any time.
    """
    torch.manual_seed(seed)
    model = GPT(GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size, vocab_size=vocab_size,
                          bias=False))
    tokens = batch_size * block_size
    weights = [m.weight.detach().to(device) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    operands = [(torch.randn(tokens, w.size(1), device=device), w, torch.randn(tokens, w.size(0), device=device))
                for w in weights]

    def step():
        with autocast:
            for x, w, g in operands:
                x @ w.t(), g @ w, g.t() @ x  # forward, input gradient, weight gradient

    return step, model.flops_per_token() * block_size * batch_size


def bench_train():
    print(f"\n## train: {n_layer} layers x {n_embd}, {n_head} heads, block {block_size}, batch {batch_size}, "
          f"vocab {vocab_size}, {dtype}, {'compiled' if compile else 'eager'}")
    if not os.path.exists(os.path.join(DATA_DIR, "train.bin")):
        raise UserError(f"{DATA_DIR}/train.bin is missing: run python prepare.py first")
    steps = {"this repository": make_step(False), "nanoGPT's optimizer": make_step(True),
             "matrix products alone": make_matmuls()}
    for step, _ in steps.values():
        for _ in range(25 if compile else 5):  # warm up (and compile)
            step()
    timings = {name: [] for name in steps}
    for r in range(rounds):
        peak = peak_flops(device, dtype)
        names = list(steps)[r % len(steps):] + list(steps)[:r % len(steps)]  # each goes first in turn
        for name in names:
            step, flops = steps[name]
            synchronize()
            t0 = time.perf_counter()
            for _ in range(steps_per_round):
                step()
            synchronize()
            dt = (time.perf_counter() - t0) / steps_per_round
            timings[name].append((dt, flops / dt / peak, peak))
    for name, rows in timings.items():
        dt, mfu, peak = (median(column) for column in zip(*rows))
        print(f"{name:22s} {dt * 1000:7.2f} ms/iter  {batch_size * block_size / dt:9,.0f} tokens/s  "
              f"MFU {mfu * 100:5.1f}%"
              f"  (peak {peak / 1e9:,.0f} GFLOP/s, median of {rounds} rounds of {steps_per_round} steps)")
    ours, theirs = (median([row[0] for row in timings[name]]) for name in ("this repository", "nanoGPT's optimizer"))
    print(f"speedup over nanoGPT's step: {theirs / ours:.2f}x")


# -----------------------------------------------------------------------------
# sample: with the KV cache, and recomputing the context as nanoGPT does

@torch.no_grad()
def generate_without_cache(model, idx, max_new_tokens, temperature=1.0, top_k=None):
    """nanoGPT's generate: the last block_size tokens through the whole model for every new token."""
    for _ in range(max_new_tokens):
        logits, _ = model(idx[:, -model.config.block_size:])
        idx = torch.cat((idx, sample_next(logits[:, -1, :], temperature, top_k)), dim=1)
    return idx


def timed(fn):
    synchronize()
    t0 = time.perf_counter()
    out = fn()
    synchronize()
    return out, time.perf_counter() - t0


def without_onednn(fn):
    """fn() with ATen's own kernels in place of oneDNN's, as sample.py runs in float32 on a CPU."""
    enabled, torch.backends.mkldnn.enabled = torch.backends.mkldnn.enabled, False
    try:
        return fn()
    finally:
        torch.backends.mkldnn.enabled = enabled


def compare_generation(model, prompt, n_new, repeats, **sampling):
    """
    Tokens/s of nanoGPT's generation, of the KV cache, and of the KV cache as sample.py runs it on a CPU
    (median of repeats, each from the same seed); whether all agree.
    """
    transposed = copy.deepcopy(model)
    transposed.store_weights_transposed()
    runs = {"recomputing (nanoGPT)": lambda: generate_without_cache(model, prompt, n_new, **sampling),
            "KV cache": lambda: model.generate(prompt, n_new, **sampling),
            "KV cache, as sample.py on CPU":
                lambda: without_onednn(lambda: transposed.generate(prompt, n_new, **sampling))}
    times, outputs = {name: [] for name in runs}, {}
    for _ in range(repeats):
        for name, run in runs.items():
            torch.manual_seed(seed)
            outputs[name], dt = timed(run)
            times[name].append(dt)
    baseline = median(times["recomputing (nanoGPT)"])
    for name in runs:
        seconds = median(times[name])
        print(f"{name:30s} {n_new / seconds:9,.1f} tokens/s  speedup {baseline / seconds:5.1f}x")
    if prompt.size(1) + n_new <= model.config.block_size:  # beyond, nanoGPT's context differs by design
        tokens = list(outputs.values())
        print(f"the same tokens from all three: {'yes' if all(torch.equal(tokens[0], t) for t in tokens) else 'NO'}")


def bench_sample(out_dir):
    print("\n## sample: 6 layers x 384, 6 heads, GPT-2's vocabulary (50304), 64 new tokens after 256, greedy")
    torch.manual_seed(seed)
    model = GPT(GPTConfig(n_layer=6, n_head=6, n_embd=384, block_size=1024, vocab_size=50304, bias=False,
                          activation="gelu")).to(device).eval()
    with autocast:
        compare_generation(model, torch.randint(50304, (1, 256), device=device), 64, repeats=3, top_k=1)

    ckpt_path = os.path.join(out_dir, "ckpt.pt")
    if not os.path.exists(ckpt_path):
        print(f"\n(no {ckpt_path} for the 2,000-token measurement: run python train.py config/shakespeare_char_cpu.py)")
        return
    model, _ = load_checkpoint(ckpt_path)
    model.to(device).eval()
    print(f"\n## sample: 2,000 tokens from {ckpt_path} (block {model.config.block_size}), temperature 0.8, top_k 200")
    with autocast:
        compare_generation(model, torch.zeros((1, 1), dtype=torch.long, device=device), 2000, repeats=3,
                           temperature=0.8, top_k=200)


# -----------------------------------------------------------------------------
# eval: HellaSwag as eval.py scores it, many examples in padded batches, against build-nanogpt's way

def shakespeare_examples(n):
    """n examples in HellaSwag's shape from Tiny Shakespeare: a context of about 200 characters, four endings of
    about 100 (HellaSwag's are of those lengths), the first of them the text's own continuation."""
    with open(os.path.join(DATA_DIR, "input.txt"), encoding="utf-8") as f:
        text = f.read()
    rng = np.random.default_rng(seed)
    examples = []
    for _ in range(n):
        starts = rng.integers(0, len(text) - 400, size=4)
        context = text[starts[0]:starts[0] + 200]
        endings = [text[starts[0] + 200:starts[0] + 300]] + [text[start:start + 100] for start in starts[1:]]
        examples.append((context, endings, 0))
    return examples


@torch.no_grad()
def build_nanogpt_losses(model, ending_pairs):
    """build-nanogpt's hellaswag.py: an example's rows padded into one batch, the logits of every position, the
    cross-entropy of every position, then the ending's summed up by a mask. (loss, n_tokens) of each ending."""
    windows = [window(context, ending, model.config.block_size) for context, ending in ending_pairs]
    rows = [inputs + [targets[-1]] for inputs, targets in windows]  # the window's tokens
    tokens = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
    mask = torch.zeros_like(tokens)
    for i, (row, (_, targets)) in enumerate(zip(rows, windows)):
        tokens[i, :len(row)] = torch.tensor(row)
        mask[i, 1:len(row)] = torch.tensor(targets) != -1
    tokens, mask = tokens.to(device), mask.to(device)
    with autocast:  # the last position's logits, which build-nanogpt computes and drops, left out: within block
        logits = model.lm_head(model.hidden_states(tokens[:, :-1]))  # (4, T - 1, vocab_size)
    shift_logits, shift_tokens = logits.contiguous(), tokens[..., 1:].contiguous()
    losses = F.cross_entropy(shift_logits.view(-1, shift_logits.size(-1)), shift_tokens.view(-1), reduction="none")
    masked = losses.view(tokens.size(0), -1) * mask[..., 1:]
    return list(zip(masked.sum(1).tolist(), mask.sum(1).tolist()))


def compare_hellaswag(model, tokenizer_spec, examples):
    """Examples/s of eval.py's batches and of build-nanogpt's way; whether both pick the same endings."""
    share = hellaswag_set(examples, tokenizer_spec)
    runs = {"one example at a time (build-nanogpt)": lambda: [build_nanogpt_losses(model, pairs)
                                                              for pairs, _ in share[0]],
            "padded batches (eval.py)": lambda: [hellaswag_accuracy(model, share, autocast)]}
    times, picks = {name: [] for name in runs}, {}
    for _ in range(3):
        for name, run_eval in runs.items():
            result, dt = timed(run_eval)
            times[name].append(dt)
            picks[name] = result
    baseline = median(times["one example at a time (build-nanogpt)"])
    for name in runs:
        print(f"{name:40s} {len(examples) / median(times[name]):8,.1f} examples/s  "
              f"speedup {baseline / median(times[name]):5.2f}x")
    theirs = picks["one example at a time (build-nanogpt)"]
    right = [min(range(4), key=lambda e: losses[e][0]) == 0 for losses in theirs]
    right_norm = [min(range(4), key=lambda e: losses[e][0] / losses[e][1]) == 0 for losses in theirs]
    ours = picks["padded batches (eval.py)"][0]
    same = (sum(right) / len(right), sum(right_norm) / len(right)) == (ours["acc"], ours["acc_norm"])
    print(f"the same acc and acc_norm both ways: {'yes' if same else 'NO'}")


def bench_eval(out_dir):
    examples = shakespeare_examples(eval_examples)
    print(f"\n## eval: HellaSwag-shaped examples from Tiny Shakespeare ({eval_examples}), a model of "
          f"6 layers x 384 with GPT-2's vocabulary, random weights")
    torch.manual_seed(seed)
    model = GPT(GPTConfig(n_layer=6, n_head=6, n_embd=384, block_size=1024, vocab_size=50304)).to(device).eval()
    compare_hellaswag(model, GPT2_SPEC, examples)
    ckpt_path = os.path.join(out_dir, "ckpt.pt")
    if not os.path.exists(ckpt_path):
        print(f"\n(no {ckpt_path}: run python train.py config/shakespeare_char_cpu.py for its figures too)")
        return
    model, tokenizer_spec = load_checkpoint(ckpt_path)
    print(f"\n## eval: the same examples, the model in {ckpt_path} (block {model.config.block_size})")
    compare_hellaswag(model.to(device).eval(), tokenizer_spec, examples)


# -----------------------------------------------------------------------------
# prepare: prepare.py against nanoGPT's data/shakespeare_char/prepare.py and data/shakespeare/prepare.py

# nanoGPT's data/shakespeare_char/prepare.py and data/shakespeare/prepare.py, down to the work they do: read the
# whole text, split it 90/10, encode each split in one call, write uint16 ids. A script of its own, as nanoGPT's
# is, so that both sides are timed as the processes a user runs (interpreter, imports, tokenizer loading and all).
NANOGPT_PREPARE = """
import os, sys
import numpy as np
path, out_dir, tokenizer = sys.argv[1:]
with open(path, encoding="utf-8") as f:
    data = f.read()
n = len(data)
train_data, val_data = data[:int(n * 0.9)], data[int(n * 0.9):]
if tokenizer == "char":
    stoi = {ch: i for i, ch in enumerate(sorted(set(data)))}
    encode = lambda s: [stoi[c] for c in s]
else:
    import tiktoken
    encode = tiktoken.get_encoding("gpt2").encode_ordinary
os.makedirs(out_dir, exist_ok=True)
np.array(encode(train_data), dtype=np.uint16).tofile(os.path.join(out_dir, "train.bin"))
np.array(encode(val_data), dtype=np.uint16).tofile(os.path.join(out_dir, "val.bin"))
"""
# prepare.py as a user runs it, in a process that then prints its peak memory in kB: Linux's VmHWM, which starts
# afresh at exec (ru_maxrss would count the memory of bench.py, from which the process was forked)
PREPARE_WITH_PEAK = ("import os, runpy, sys; sys.argv = sys.argv[1:]; "
                     "sys.path.insert(0, os.path.dirname(sys.argv[0])); "
                     "runpy.run_path(sys.argv[0], run_name='__main__'); "
                     "print('peak', next(line.split()[1] for line in open('/proc/self/status') if 'VmHWM' in line))")


def run(args, cwd):
    """Run a command; return (stdout, wall seconds), or raise its error."""
    t0 = time.perf_counter()
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise UserError(f"{' '.join(map(str, args))} failed: {result.stderr.strip().splitlines()[-1:]}")
    return result.stdout, time.perf_counter() - t0


def run_prepare(args, cwd):
    """prepare.py with args: (wall seconds, peak memory in MB, seconds spent learning a BPE)."""
    stdout, wall = run([sys.executable, "-c", PREPARE_WITH_PEAK, os.path.join(ROOT, "prepare.py"), *args], cwd)
    lines = stdout.splitlines()
    learned = [line for line in lines if line.startswith("learned a BPE")]
    return wall, int(lines[-1].split()[1]) / 1024, float(learned[0].split(" in ")[1].rstrip("s")) if learned else 0.0


def bench_prepare():
    source = os.path.join(DATA_DIR, "input.txt")
    if not os.path.exists(source):
        raise UserError(f"{source} is missing: run python prepare.py first")
    with open(source, encoding="utf-8") as f:
        text = f.read()
    print("\n## prepare: Tiny Shakespeare repeated; whole processes, median of 3 runs each")
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for megabytes in (char_megabytes, gpt2_megabytes):
            paths[megabytes] = os.path.join(tmp, f"text_{megabytes}mb.txt")
            with open(paths[megabytes], "w", encoding="utf-8") as f:
                f.write(text * -(-megabytes * 10**6 // len(text)))  # at least that many megabytes
        for tokenizer, megabytes in (("char", char_megabytes), ("gpt2", gpt2_megabytes)):
            path, theirs_dir = paths[megabytes], os.path.join(tmp, "data", f"nanogpt_{tokenizer}")
            ours = [run_prepare([f"--input={path}", f"--tokenizer={tokenizer}", f"--dataset=ours_{tokenizer}"], tmp)
                    for _ in range(3)]
            theirs = [run([sys.executable, "-c", NANOGPT_PREPARE, path, theirs_dir, tokenizer], tmp)[1]
                      for _ in range(3)]
            ours_dir = os.path.join(tmp, "data", f"ours_{tokenizer}")
            same = all(same_token_ids(os.path.join(ours_dir, name), os.path.join(theirs_dir, name))
                       for name in ("train.bin", "val.bin"))
            size, (wall, peak, _), theirs = os.path.getsize(path) / 1e6, np.median(ours, axis=0), median(theirs)
            print(f"{tokenizer:4s} {size:5.0f} MB: prepare.py {size / wall:6.1f} MB/s ({wall:5.1f}s, peak memory "
                  f"{peak:4.0f} MB), nanoGPT's way {size / theirs:6.1f} MB/s ({theirs:5.1f}s), speedup "
                  f"{theirs / wall:.2f}x, same token ids: {'yes' if same else 'NO'}")
        for megabytes in (gpt2_megabytes, char_megabytes):  # a BPE of the default size, learned, then encoded
            path = paths[megabytes]
            rows = [run_prepare([f"--input={path}", "--tokenizer=bpe", "--dataset=ours_bpe"], tmp) for _ in range(3)]
            size, (wall, peak, learning) = os.path.getsize(path) / 1e6, np.median(rows, axis=0)
            print(f"bpe  {size:5.0f} MB: prepare.py {size / wall:6.1f} MB/s ({wall:5.1f}s, peak memory "
                  f"{peak:4.0f} MB), of which learning from train {learning:4.1f}s ({size * 0.9 / learning:4.1f} "
                  f"MB/s), encoding and writing {wall - learning:4.1f}s ({size / (wall - learning):4.1f} MB/s)")
        # web text and verse: a blank line between the lines, and every line indented, so that no newline stands
        # between two words
        path, paragraphs = os.path.join(tmp, "paragraphs.txt"), text.replace("\n", "\n\n ")
        with open(path, "w", encoding="utf-8") as f:
            f.write(paragraphs * -(-char_megabytes * 10**6 // len(paragraphs)))
        rows = [run_prepare([f"--input={path}", "--tokenizer=gpt2", "--dataset=paragraphs"], tmp) for _ in range(3)]
        size, (wall, peak, _) = os.path.getsize(path) / 1e6, np.median(rows, axis=0)
        print(f"gpt2 {size:5.0f} MB of paragraphs, lines indented: prepare.py {size / wall:6.1f} MB/s ({wall:5.1f}s, "
              f"peak memory {peak:4.0f} MB)")


def same_token_ids(a, b):
    return np.array_equal(np.fromfile(a, np.uint16), np.fromfile(b, np.uint16))


# -----------------------------------------------------------------------------
# recipe, tokenizers: whole processes through prepare.py (where a recipe needs data of its own) and train.py,
# in a working folder that sees data/shakespeare_char

def val_figures(stdout):
    """The final val loss and bits per byte that train.py printed, and its best val loss, bpb and iteration."""
    steps = [line for line in stdout.splitlines() if line.startswith("step ")]
    loss, bpb = ([float(line.split(f"{key} ")[1].split(",")[0]) for line in steps] for key in ("val loss", "val bpb"))
    best = min(range(len(steps)), key=lambda i: loss[i])
    return loss[-1], bpb[-1], loss[best], bpb[best], int(steps[best].split(":")[0].split()[1])


def recipe_runs(runs, work_dir):
    """
    For each (name, prepare.py args or None, train.py args or a function that returns them), recipe_repeats times
    in turn, each time with the next seed (a repeated seed would repeat the loss), run prepare.py and train.py in
    work_dir, the checkpoint going to out_dir_of(name); print the medians of the wall time of both, prepare
    included, and of the val figures.
    """
    results = {name: [] for name, _, _ in runs}
    for repeat in range(recipe_repeats):
        for name, prepare_args, train_args in runs:
            prepare_wall = run_prepare(prepare_args, work_dir)[0] if prepare_args else 0.0
            if callable(train_args):  # arguments that depend on the runs before it in this repeat
                train_args = train_args()
            stdout, wall = run([sys.executable, os.path.join(ROOT, "train.py"), *train_args, f"--seed={seed + repeat}",
                                f"--out_dir={out_dir_of(name)}"], work_dir)
            results[name].append((prepare_wall + wall, *val_figures(stdout)))
    for name, rows in results.items():
        walls, losses, bpbs, bests, best_bpbs, best_iters = zip(*rows)
        each = f"  (median of {len(rows)} seeds: {', '.join(f'{bpb:.3f}' for bpb in bpbs)})" if len(rows) > 1 else ""
        print(f"{name:44s} {median(walls):6.1f}s  final val bpb {median(bpbs):.3f} (loss {median(losses):.4f}), best "
              f"{median(best_bpbs):.3f} (loss {median(bests):.4f}, iter {median(best_iters):.0f}){each}")


def out_dir_of(name):
    return "out-" + "".join(c if c.isalnum() else "-" for c in name)


def working_folder(tmp):
    """tmp with data/shakespeare_char in it (a link), where recipes prepare and train as in a checkout."""
    if not os.path.exists(os.path.join(DATA_DIR, "val.bin")):
        raise UserError(f"{DATA_DIR} is not prepared: run python prepare.py first")
    os.makedirs(os.path.join(tmp, "data"))
    os.symlink(os.path.abspath(DATA_DIR), os.path.join(tmp, DATA_DIR))
    return tmp


def bpe_prepare(*args):
    """prepare.py's arguments for a BPE of Tiny Shakespeare, from data/shakespeare_char's copy of the text."""
    return [f"--input={os.path.abspath(os.path.join(DATA_DIR, 'input.txt'))}", *args]


def bench_recipe(work_dir):
    print("\n## recipe: the whole prepare.py and train.py processes; val bits per byte of the text")
    if device_type == "cuda":
        recipe_runs([("nanoGPT's GPU command", None, NANOGPT_GPU + [f"--device={device}"]),
                     ("config/shakespeare_char.py", None, [GPU_RECIPE, f"--device={device}"])], work_dir)
    else:
        recipe_runs([("nanoGPT's CPU command", None, NANOGPT_CPU),
                     (RECIPE_NAME, None, [RECIPE, "--device=cpu"]),
                     ("config/shakespeare_bpe_cpu.py", bpe_prepare("--tokenizer=bpe", "--dataset=shakespeare_bpe"),
                      [BPE_RECIPE, "--device=cpu"])], work_dir)


def bench_tokenizers(work_dir):
    print("\n## tokenizers: each with the best CPU settings found, prepare.py and train.py; val bits per byte")
    steps = lambda n: [f"--max_iters={n}", f"--lr_decay_iters={n}", f"--eval_interval={n}"]
    recipe_runs([("characters (config/shakespeare_char_cpu.py)", None, [RECIPE, "--device=cpu"]),
                 ("BPE of 512", bpe_prepare("--tokenizer=bpe", "--vocab_size=512", "--dataset=bpe512"),
                  [BPE_RECIPE, "--device=cpu", "--dataset=bpe512", *steps(760)]),
                 ("BPE of 1024 (config/shakespeare_bpe_cpu.py)",
                  bpe_prepare("--tokenizer=bpe", "--dataset=shakespeare_bpe"), [BPE_RECIPE, "--device=cpu"]),
                 ("BPE of 2048", bpe_prepare("--tokenizer=bpe", "--vocab_size=2048", "--dataset=bpe2048"),
                  [BPE_RECIPE, "--device=cpu", "--dataset=bpe2048", *steps(580)]),
                 ("GPT-2's BPE (50257)", bpe_prepare("--tokenizer=gpt2", "--dataset=gpt2"),
                  [BPE_RECIPE, "--device=cpu", "--dataset=gpt2", *steps(160), "--batch_size=6",
                   "--warmup_iters=10", "--learning_rate=1e-2", "--muon_learning_rate=0.07"])], work_dir)


def bench_ablation(work_dir):
    print("\n## ablation: config/shakespeare_char_cpu.py with one change at a time, the same number of steps")
    recipe_runs([("the recipe", None, [RECIPE]),
                 ("AdamW instead of Muon", None, [RECIPE, "--muon_learning_rate=0.0"]),
                 ("learned positions instead of rotary", None, [RECIPE, "--rotary=False"]),
                 ("no QK-norm", None, [RECIPE, "--qk_norm=False", "--attn_scale=1.0"]),
                 ("attention at the usual scale", None, [RECIPE, "--attn_scale=1.0"])], work_dir)


def bench_tune(work_dir):
    print("\n## tune: a search from config/tune_shakespeare_char_cpu.py, then its best settings against the recipe")
    study_dir = os.path.join(work_dir, "out-tune")
    stdout, search_wall = run([sys.executable, os.path.join(ROOT, "tune.py"), TUNE_CONFIG, f"--study_dir={study_dir}",
                               f"--seed={seed}"], work_dir)
    print("\n".join(line for line in stdout.splitlines() if not line.startswith("trial ")))
    with open(os.path.join(study_dir, "trials.csv"), newline="") as f:
        trials = [row for row in csv.DictReader(f)]
    records = [read_metrics(os.path.join(study_dir, f"trial_{row['number']}", "metrics.jsonl")) for row in trials]
    trial_seconds = sum(float(row["seconds"] or 0) for row in trials)
    train_seconds = sum(rows[-1]["elapsed"] for rows in records if rows)
    print(f"search: {len(trials)} trials in {search_wall / 60:.1f} min; train.py's own time (from its first step) "
          f"{train_seconds:.0f}s, process start-up and tune.py's reading {trial_seconds - train_seconds:.0f}s "
          f"({(trial_seconds - train_seconds) / train_seconds:.1%}), tune.py between trials "
          f"{search_wall - trial_seconds:.0f}s ({(search_wall - trial_seconds) / train_seconds:.1%})")
    with open(os.path.join(study_dir, "best.py")) as f:
        print(f"\n{study_dir}/best.py:\n{f.read()}")

    def best_in_the_recipes_time():
        # the recipe's training time in this repeat, measured just before, so that both get the same time today
        recipe_metrics = os.path.join(work_dir, out_dir_of(RECIPE_NAME), "metrics.jsonl")
        recipe_seconds = training_seconds(read_metrics(recipe_metrics))
        print(f"the recipe trained for {recipe_seconds:.1f}s: best.py gets --max_seconds={int(recipe_seconds)}")
        return [os.path.join(study_dir, "best.py"), f"--max_seconds={int(recipe_seconds)}", "--eval_interval=1000000"]
    recipe_runs([(RECIPE_NAME, None, [RECIPE, "--device=cpu"]),
                 ("out-tune/best.py", None, best_in_the_recipes_time)], work_dir)


def training_seconds(records):
    """How long a run's steps took, from its first to its last (without the final evaluation), by its metrics."""
    steps = [record for record in records if record["kind"] == "iter"]
    step_seconds = (steps[-1]["elapsed"] - steps[0]["elapsed"]) / (steps[-1]["iter"] - steps[0]["iter"])
    return steps[-1]["elapsed"] + (records[-1]["iter"] - 1 - steps[-1]["iter"]) * step_seconds


# -----------------------------------------------------------------------------

print(f"# bench.py on {machine()}; torch {torch.__version__}, device {device}, dtype {dtype}")
with tempfile.TemporaryDirectory() as tmp:
    work_dir = working_folder(tmp) if part in ("all", "recipe", "tokenizers", "ablation", "tune") else None
    if part in ("all", "train"):
        bench_train()
    if part in ("all", "recipe"):
        bench_recipe(work_dir)
    if part in ("all", "sample"):  # after the recipes, from the character recipe's model
        bench_sample(os.path.join(work_dir, out_dir_of(RECIPE_NAME)) if part == "all" else "out")
    if part in ("all", "prepare"):
        bench_prepare()
    if part == "tokenizers":
        bench_tokenizers(work_dir)
    if part == "ablation":
        bench_ablation(work_dir)
    if part == "eval":
        bench_eval("out")
    if part == "tune":
        bench_tune(work_dir)
