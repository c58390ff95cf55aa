"""
bench.py's speed parts: each figure beside a baseline measured in the same run, so that a machine whose speed drifts
(a shared cloud CPU) is compared with itself. Each part takes bench.py's settings as `opts` (with the device, dtype
and autocast context made concrete).

- bench_train(opts): ms/iter, tokens/s and MFU of a training step (forward, backward, gradient clipping, optimizer
  step), by default on nanoGPT's CPU model, against the same step with nanoGPT's optimizer (PyTorch's fused AdamW
  only on CUDA), and the step's matrix products alone, which bound what the step can reach. MFU is against the
  device's peak: on a CPU, an fp32 matrix product timed before every round of steps.
- bench_sample(opts, out_dir): tokens/s of greedy generation without the KV cache (the whole context through the
  model for every token, as nanoGPT does), with it, and with it as sample.py runs on a CPU, on a 6 x 384 model
  with GPT-2's vocabulary, the cost of the penalties against loops, and the share of the speed that memory's
  bandwidth allows (every weight read once a token); then 2,000 tokens with sample.py's settings
  from out_dir's checkpoint, and how much 10 samples of its repeat themselves with each setting against loops.
- bench_eval(opts, out_dir): examples/s of HellaSwag's scoring as eval.py does it (many examples in padded batches,
  a context once for its endings) against build-nanogpt's way (one example's four endings at a time), with the
  FLOPs of each, on HellaSwag-shaped examples cut from Tiny Shakespeare: with a 6 x 384 model with GPT-2's
  vocabulary, then with out_dir's checkpoint if there is one.
"""

import copy
import os
import time
from statistics import median

import numpy as np
import torch
import torch.nn.functional as F

from model import GPT, GPTConfig
from smallgpt.bench_prepare import DATA_DIR
from smallgpt.checkpoint import load_checkpoint
from smallgpt.devices import peak_flops
from smallgpt.errors import UserError
from smallgpt.hellaswag import hellaswag_accuracy, hellaswag_share
from smallgpt.likelihood import shared_rows, window
from smallgpt.sampling import Penalties, repeated_shares, sample_next
from smallgpt.tokenizer import GPT2_SPEC, make_codec

def synchronize(opts):
    if opts.device_type == "cuda":
        torch.cuda.synchronize()


def timed(opts, fn):
    synchronize(opts)
    t0 = time.perf_counter()
    out = fn()
    synchronize(opts)
    return out, time.perf_counter() - t0


def train_part_model(opts):
    """A fresh model of the train part's shape (nanoGPT's: no biases, exact GELU), seeded."""
    torch.manual_seed(opts.seed)
    return GPT(GPTConfig(n_layer=opts.n_layer, n_head=opts.n_head, n_embd=opts.n_embd, block_size=opts.block_size,
                         vocab_size=opts.vocab_size, bias=False, dropout=0.0, activation="gelu"))


def make_step(opts, nanogpt_optimizer):
    """A training step of a fresh model on fixed batches of Tiny Shakespeare; returns (step, FLOPs per step)."""
    model = train_part_model(opts).to(opts.device)
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), opts.device_type)
    if nanogpt_optimizer:  # the same groups, fused only on CUDA (elsewhere a loop over the tensors)
        groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in optimizer.param_groups]
        optimizer = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.99), fused=opts.device_type == "cuda")
    scaler = torch.amp.GradScaler(opts.device_type, enabled=opts.dtype == "float16")
    forward = torch.compile(model) if opts.compile else model
    data = np.memmap(os.path.join(DATA_DIR, "train.bin"), dtype=np.uint16, mode="r")
    starts = np.random.default_rng(opts.seed).integers(0, len(data) - opts.block_size, size=opts.batch_size)
    windows = data[starts[:, None] + np.arange(opts.block_size + 1)].astype(np.int64)
    windows = torch.from_numpy(windows) % opts.vocab_size
    x, y = windows[:, :-1].contiguous().to(opts.device), windows[:, 1:].contiguous().to(opts.device)

    def step():
        with opts.autocast:
            _, loss = forward(x, y)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    return step, model.flops_per_token() * opts.block_size * opts.batch_size


def make_matmuls(opts):
    """
    The step's matrix products alone, back to back (each Linear's forward product and its two backward ones),
    credited with the whole step's FLOPs: the MFU the step would reach if nothing else took any time.
    """
    model = train_part_model(opts)
    tokens = opts.batch_size * opts.block_size
    weights = [m.weight.detach().to(opts.device) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    randn = lambda *shape: torch.randn(*shape, device=opts.device)
    operands = [(randn(tokens, w.size(1)), w, randn(tokens, w.size(0))) for w in weights]

    def step():
        with opts.autocast:
            for x, w, g in operands:
                x @ w.t(), g @ w, g.t() @ x  # forward, input gradient, weight gradient

    return step, model.flops_per_token() * opts.block_size * opts.batch_size


def bench_train(opts):
    print(f"\n## train: {opts.n_layer} layers x {opts.n_embd}, {opts.n_head} heads, block {opts.block_size}, "
          f"batch {opts.batch_size}, "
          f"vocab {opts.vocab_size}, {opts.dtype}, {'compiled' if opts.compile else 'eager'}")
    if not os.path.exists(os.path.join(DATA_DIR, "train.bin")):
        raise UserError(f"{DATA_DIR}/train.bin is missing: run python prepare.py first")
    steps = {"this repository": make_step(opts, False), "nanoGPT's optimizer": make_step(opts, True),
             "matrix products alone": make_matmuls(opts)}
    for step, _ in steps.values():
        for _ in range(25 if opts.compile else 5):  # warm up (and compile)
            step()
    timings = {name: [] for name in steps}
    for r in range(opts.rounds):
        peak = peak_flops(opts.device, opts.dtype)
        names = list(steps)[r % len(steps):] + list(steps)[:r % len(steps)]  # each goes first in turn
        for name in names:
            step, flops = steps[name]
            synchronize(opts)
            t0 = time.perf_counter()
            for _ in range(opts.steps_per_round):
                step()
            synchronize(opts)
            dt = (time.perf_counter() - t0) / opts.steps_per_round
            timings[name].append((dt, flops / dt / peak, peak))
    for name, rows in timings.items():
        dt, mfu, peak = (median(column) for column in zip(*rows))
        print(f"{name:22s} {dt * 1000:7.2f} ms/iter  {opts.batch_size * opts.block_size / dt:9,.0f} tokens/s  "
              f"MFU {mfu * 100:5.1f}%"
              f"  (peak {peak / 1e9:,.0f} GFLOP/s, median of {opts.rounds} rounds of {opts.steps_per_round} steps)")
    ours, theirs = (median([row[0] for row in timings[name]]) for name in ("this repository", "nanoGPT's optimizer"))
    print(f"speedup over nanoGPT's step: {theirs / ours:.2f}x")


@torch.no_grad()
def generate_without_cache(model, idx, max_new_tokens, temperature=1.0, top_k=None):
    """nanoGPT's generate: the last block_size tokens through the whole model for every new token."""
    for _ in range(max_new_tokens):
        logits, _ = model(idx[:, -model.config.block_size:])
        idx = torch.cat((idx, sample_next(logits[:, -1, :], temperature, top_k)), dim=1)
    return idx


def without_onednn(fn):
    """fn() with ATen's own kernels in place of oneDNN's, as sample.py runs in float32 on a CPU."""
    enabled, torch.backends.mkldnn.enabled = torch.backends.mkldnn.enabled, False
    try:
        return fn()
    finally:
        torch.backends.mkldnn.enabled = enabled


def compare_generation(opts, model, prompt, n_new, repeats, **sampling):
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
            torch.manual_seed(opts.seed)
            outputs[name], dt = timed(opts, run)
            times[name].append(dt)
    baseline = median(times["recomputing (nanoGPT)"])
    for name in runs:
        seconds = median(times[name])
        print(f"{name:30s} {n_new / seconds:9,.1f} tokens/s  speedup {baseline / seconds:5.1f}x")
    if prompt.size(1) + n_new <= model.config.block_size:  # beyond, nanoGPT's context differs by design
        tokens = list(outputs.values())
        print(f"the same tokens from all three: {'yes' if all(torch.equal(tokens[0], t) for t in tokens) else 'NO'}")
    return {name: n_new / median(times[name]) for name in runs}


def memory_bandwidth(opts, megabytes=1024):
    """Bytes per second the device reads from memory: the best of 5 sums over a tensor far larger than its caches."""
    x = torch.ones(megabytes * 2**20 // 4, device=opts.device)
    return x.numel() * 4 / min(timed(opts, x.sum)[1] for _ in range(5))


def gpt2_vocab_model(seed):
    """The sample part's model, random weights from seed: 6 layers x 384 with GPT-2's vocabulary, on the CPU."""
    torch.manual_seed(seed)
    return GPT(GPTConfig(n_layer=6, n_head=6, n_embd=384, block_size=1024, vocab_size=50304, bias=False,
                         activation="gelu"))


def bench_sample(opts, out_dir):
    print("\n## sample: 6 layers x 384, 6 heads, GPT-2's vocabulary (50304), 64 new tokens after 256, greedy")
    model = gpt2_vocab_model(opts.seed).to(opts.device).eval()
    prompt = torch.randint(50304, (1, 256), device=opts.device)
    with opts.autocast:
        speeds = compare_generation(opts, model, prompt, 64, repeats=3, top_k=1)
        # the penalties' cost: a few operations over the vocabulary for each token, beside the model's step
        penalties = Penalties(repetition=1.3, frequency=0.1, presence=0.5)
        plain, penalised = (median(timed(opts, lambda: model.generate(prompt, 64, top_k=1, **settings))[1]
                                   for _ in range(3)) for settings in ({}, dict(penalties=penalties)))
        print(f"{'KV cache, all three penalties':30s} {64 / penalised:9,.1f} tokens/s  ({penalised / plain - 1:+.1%} "
              f"time per token)")
    # a token reads every weight once (the cache and activations are a few MB more): memory bounds the speed
    bandwidth, weight_bytes = memory_bandwidth(opts), sum(p.numel() * p.element_size() for p in model.parameters())
    ours, nanogpt = speeds["KV cache, as sample.py on CPU"], speeds["recomputing (nanoGPT)"]
    print(f"memory reads {bandwidth / 1e9:.1f} GB/s: the weights ({weight_bytes / 1e6:.0f} MB) once a token allow "
          f"{bandwidth / weight_bytes:,.1f} tokens/s; sample.py's way reaches {ours * weight_bytes / bandwidth:.0%} "
          f"of it, nanoGPT's {nanogpt * weight_bytes / bandwidth:.0%}")

    ckpt_path = os.path.join(out_dir, "ckpt.pt")
    if not os.path.exists(ckpt_path):
        print(f"\n(no {ckpt_path} for the 2,000-token measurement: run python train.py config/shakespeare_char_cpu.py)")
        return
    model, spec = load_checkpoint(ckpt_path)
    model.to(opts.device).eval()
    print(f"\n## sample: 2,000 tokens from {ckpt_path} (block {model.config.block_size}), temperature 0.8, top_k 200")
    with opts.autocast:
        compare_generation(opts, model, torch.zeros((1, 1), dtype=torch.long, device=opts.device), 2000, repeats=3,
                           temperature=0.8, top_k=200)
        compare_penalties(opts, model, make_codec(spec))


# sample.py's settings against loops, each on its own, beside none
LOOP_SETTINGS = {"none": {}, "--repetition_penalty=1.1": dict(penalties=Penalties(repetition=1.1)),
                 "--repetition_penalty=1.3": dict(penalties=Penalties(repetition=1.3)),
                 "--frequency_penalty=0.1": dict(penalties=Penalties(frequency=0.1)),
                 "--presence_penalty=0.5": dict(penalties=Penalties(presence=0.5)), "--min_p=0.1": dict(min_p=0.1)}


def compare_penalties(opts, model, codec, num_samples=10, n_new=500):
    """How much num_samples samples of sample.py's defaults repeat themselves, with each setting against loops."""
    encode, decode = codec
    prompt = torch.tensor([encode("\n")], device=opts.device)
    print(f"\n## sample: {num_samples} samples of {n_new} tokens, temperature 0.8, top_k 200: lines of 20 characters "
          f"or more that repeat an earlier line of their sample, 4-grams of tokens seen before in it")
    for name, settings in LOOP_SETTINGS.items():
        torch.manual_seed(opts.seed)
        samples, seconds = timed(opts, lambda: [model.generate(prompt, n_new, temperature=0.8, top_k=200, **settings)[0]
                                                .tolist() for _ in range(num_samples)])
        lines, grams = repeated_shares([decode(tokens) for tokens in samples], samples)
        print(f"{name:26s} repeated lines {lines:6.1%}  repeated 4-grams {grams:6.1%}  "
              f"{num_samples * n_new / seconds:7,.1f} tokens/s")


def shakespeare_examples(opts, n):
    """n examples in HellaSwag's shape from Tiny Shakespeare: a context of about 200 characters, four endings of
    about 100 (HellaSwag's are of those lengths), the first of them the text's own continuation."""
    with open(os.path.join(DATA_DIR, "input.txt"), encoding="utf-8") as f:
        text = f.read()
    rng = np.random.default_rng(opts.seed)
    examples = []
    for _ in range(n):
        starts = rng.integers(0, len(text) - 400, size=4)
        context = text[starts[0]:starts[0] + 200]
        endings = [text[starts[0] + 200:starts[0] + 300]] + [text[start:start + 100] for start in starts[1:]]
        examples.append((context, endings, 0))
    return examples


@torch.no_grad()
def build_nanogpt_losses(opts, model, ending_pairs):
    """build-nanogpt's hellaswag.py: an example's rows padded into one batch, the logits of every position, the
    cross-entropy of every position, then the ending's summed up by a mask. (loss, n_tokens) of each ending."""
    windows = [window(context, ending, model.config.block_size) for context, ending in ending_pairs]
    rows = [inputs + [targets[-1]] for inputs, targets in windows]  # the window's tokens
    tokens = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
    mask = torch.zeros_like(tokens)
    for i, (row, (_, targets)) in enumerate(zip(rows, windows)):
        tokens[i, :len(row)] = torch.tensor(row)
        mask[i, 1:len(row)] = torch.tensor(targets) != -1
    tokens, mask = tokens.to(opts.device), mask.to(opts.device)
    with opts.autocast:  # the last position's logits, which build-nanogpt computes and drops, left out: within block
        logits = model.lm_head(model.hidden_states(tokens[:, :-1]))  # (4, T - 1, vocab_size)
    shift_logits, shift_tokens = logits.contiguous(), tokens[..., 1:].contiguous()
    losses = F.cross_entropy(shift_logits.view(-1, shift_logits.size(-1)), shift_tokens.view(-1), reduction="none")
    masked = losses.view(tokens.size(0), -1) * mask[..., 1:]
    return list(zip(masked.sum(1).tolist(), mask.sum(1).tolist()))


def hellaswag_flops(model, share):
    """The FLOPs of scoring a hellaswag_share each way: build-nanogpt's (an example's rows padded to the longest,
    every position through the head) and eval.py's (likelihood.shared_rows, the scored positions only through the
    head). A layer's attention over a row of T tokens is counted whole under a mask, half in the causal order."""
    cfg = model.config
    blocks = lambda T, masked: 2 * cfg.n_layer * (12 * cfg.n_embd**2 * T + (2 if masked else 1) * T**2 * cfg.n_embd)
    head = 2 * cfg.n_embd * cfg.vocab_size  # a position's logits
    theirs = ours = 0
    for pairs, _ in share[0]:
        T = max(len(window(context, ending, cfg.block_size)[0]) for context, ending in pairs)
        theirs += len(pairs) * (blocks(T, False) + T * head)
        for tokens, _, segments, scored in shared_rows(pairs, cfg.block_size, cfg.n_embd):
            ours += blocks(len(tokens), max(segments) > 1) + len(scored) * head
    return {"one example at a time (build-nanogpt)": theirs, "padded batches (eval.py)": ours}


def compare_hellaswag(opts, model, tokenizer_spec, examples):
    """Examples/s of eval.py's batches and of build-nanogpt's way, with the FLOPs each computes and the FLOP/s that
    makes; whether both pick the same endings."""
    share = hellaswag_share(examples, tokenizer_spec)
    runs = {"one example at a time (build-nanogpt)": lambda: [build_nanogpt_losses(opts, model, pairs)
                                                              for pairs, _ in share[0]],
            "padded batches (eval.py)": lambda: [hellaswag_accuracy(model, share, opts.autocast)]}
    times, picks = {name: [] for name in runs}, {}
    for _ in range(3):
        for name, run_eval in runs.items():
            result, dt = timed(opts, run_eval)
            times[name].append(dt)
            picks[name] = result
    baseline = median(times["one example at a time (build-nanogpt)"])
    flops = hellaswag_flops(model, share)
    for name in runs:
        print(f"{name:40s} {len(examples) / median(times[name]):8,.1f} examples/s  "
              f"speedup {baseline / median(times[name]):5.2f}x  {flops[name] / len(examples) / 1e6:8,.1f} MFLOP "
              f"an example, {flops[name] / median(times[name]) / 1e9:6,.1f} GFLOP/s")
    fewer = flops["one example at a time (build-nanogpt)"] / flops["padded batches (eval.py)"]
    print(f"build-nanogpt's way computes {fewer:.2f}x eval.py's FLOPs: the speedup where both run at the same FLOP/s")
    theirs = picks["one example at a time (build-nanogpt)"]
    right = [min(range(4), key=lambda e: losses[e][0]) == 0 for losses in theirs]
    right_norm = [min(range(4), key=lambda e: losses[e][0] / losses[e][1]) == 0 for losses in theirs]
    ours = picks["padded batches (eval.py)"][0]
    same = (sum(right) / len(right), sum(right_norm) / len(right)) == (ours["acc"], ours["acc_norm"])
    print(f"the same acc and acc_norm both ways: {'yes' if same else 'NO'}")


def bench_eval(opts, out_dir):
    examples = shakespeare_examples(opts, opts.eval_examples)
    print(f"\n## eval: HellaSwag-shaped examples from Tiny Shakespeare ({opts.eval_examples}), a model of "
          f"6 layers x 384 with GPT-2's vocabulary, random weights; the device's peak "
          f"{peak_flops(opts.device, opts.dtype) / 1e9:,.0f} GFLOP/s")
    torch.manual_seed(opts.seed)
    model = GPT(GPTConfig(n_layer=6, n_head=6, n_embd=384, block_size=1024, vocab_size=50304)).to(opts.device).eval()
    compare_hellaswag(opts, model, GPT2_SPEC, examples)
    ckpt_path = os.path.join(out_dir, "ckpt.pt")
    if not os.path.exists(ckpt_path):
        print(f"\n(no {ckpt_path}: run python train.py config/shakespeare_char_cpu.py for its figures too)")
        return
    model, tokenizer_spec = load_checkpoint(ckpt_path)
    print(f"\n## eval: the same examples, the model in {ckpt_path} (block {model.config.block_size})")
    compare_hellaswag(opts, model.to(opts.device).eval(), tokenizer_spec, examples)
