"""
Every training feature in the precisions and layouts it meets on a GPU, with a CPU standing in: float32, bfloat16
autocast and float16 autocast with the gradient scaler; eager and compiled (inductor); one process, DDP and FSDP over
gloo (two processes, started as torchrun starts them). Each feature runs once in each precision, and the cells are
laid out so that every pair of settings meets at least once (CELLS); a combination that cannot work is refused in
one line. Each cell trains a tiny model for 6 steps and must log finite losses, each within its precision's tolerance
of float32's (LoRA's adapters too), and show what its feature does (an early stop, a resume, HellaSwag's figure...).
"""

import json
import math
import re

import pytest
import torch

from conftest import ROOT, TINY, parse_losses, prepare_in, run_ranks, run_script, sample_text

HELLASWAG = ROOT / "tests" / "data" / "hellaswag_rows.jsonl"
COMMON = [*TINY, "--eval_iters=2", "--max_iters=6", "--eval_interval=6", "--log_interval=1", "--warmup_iters=2",
          "--learning_rate=1e-2", "--lr_decay_iters=6"]

FEATURES = {
    "plain": [],
    "lora": ["--lora_rank=4"],  # on the finished run's model (init_from is added where it is known)
    "activation_checkpointing": ["--activation_checkpointing=True"],
    "chunked_loss": ["--chunked_loss=True"],
    "both": ["--activation_checkpointing=True", "--chunked_loss=True"],
    "muon": ["--muon_learning_rate=0.02"],
    "rotary_qk_norm": ["--rotary=True", "--qk_norm=True", "--attn_scale=1.5"],
    "bigram": ["--n_layer=0", "--learning_rate=0.3"],  # a table of logits, each trained by few tokens: a high rate
    # with chunked_loss, whose forward pass returns no logits: HellaSwag must not need them
    "eval_hellaswag": ["--eval_hellaswag=8", f"--hellaswag_file={HELLASWAG}", "--chunked_loss=True"],
    # nothing learns (learning_rate 0), so that no evaluation improves on the first: every cell stops at iter 3
    "patience": ["--patience=1", "--eval_interval=3", "--learning_rate=0", "--decay_lr=False"],
    "max_seconds": ["--max_seconds=1"],
    "gradient_accumulation": ["--gradient_accumulation_steps=4"],
    "resume": [],  # 3 steps, then resumed for 3 more
    # conversations (spelling words), in the characters of the text: trained on the replies alone
    "chat": ["--dataset=chat"],
    "chat_lora": ["--dataset=chat", "--lora_rank=4"],
}

F32, BF16, F16 = "float32", "bfloat16", "float16"
SINGLE, DDP, FSDP = "single", "ddp", "fsdp"
# Each feature's cells, (dtype, layout, compile), float32's first: the reference that the others are held to. Every
# feature meets every precision, every layout (Muon refuses FSDP; chat meets FSDP with LoRA) and compile once; every
# precision meets every layout (but FSDP float16, refused) and compile; every layout meets compile. The features that
# leave the compiled model as it is compile it as "plain" does (float32, one process): the compiler's cache has it
# then. (Chat's few replies in a batch make large gradients: float16 under DDP, whose processes' gradients are twice
# one process's before they are averaged, overflows once in 6 steps, and its scaler rightly skips that step.)
CELLS = {
    "plain": [(F32, SINGLE, True), (BF16, FSDP, False), (F16, DDP, False)],
    "lora": [(F32, FSDP, False), (BF16, SINGLE, True), (F16, DDP, False)],
    "activation_checkpointing": [(F32, DDP, False), (BF16, FSDP, False), (F16, SINGLE, True)],
    "chunked_loss": [(F32, FSDP, False), (BF16, DDP, False), (F16, SINGLE, True)],
    "both": [(F32, SINGLE, False), (BF16, FSDP, True), (F16, DDP, False)],
    "muon": [(F32, SINGLE, True), (BF16, DDP, False), (F16, DDP, False)],
    "rotary_qk_norm": [(F32, FSDP, False), (BF16, SINGLE, True), (F16, DDP, False)],
    "bigram": [(F32, DDP, True), (BF16, FSDP, False), (F16, SINGLE, False)],
    "eval_hellaswag": [(F32, FSDP, False), (BF16, DDP, False), (F16, SINGLE, True)],
    "patience": [(F32, SINGLE, True), (BF16, FSDP, False), (F16, DDP, False)],
    "max_seconds": [(F32, SINGLE, True), (BF16, FSDP, False), (F16, DDP, False)],
    "gradient_accumulation": [(F32, SINGLE, True), (BF16, FSDP, False), (F16, DDP, False)],
    "resume": [(F32, SINGLE, True), (BF16, FSDP, False), (F16, DDP, False)],
    "chat": [(F32, SINGLE, True), (BF16, DDP, False), (F16, SINGLE, False)],
    "chat_lora": [(F32, FSDP, False), (BF16, SINGLE, True), (F16, DDP, False)],
}
# the combinations refused in one line, and what the line says
REFUSED = [(["--fsdp=True", "--dtype=float16"], "fsdp=True trains in bfloat16 or float32"),
           (["--fsdp=True", "--muon_learning_rate=0.02"], "fsdp=True cannot train with Muon")]

# How far a cell may be from float32's, in units of its precision's roundoff (2^-8 for bfloat16, 2^-11 for float16):
# autocast rounds each matrix product's output to it, while the loss is computed in float32. A few steps of training
# carry those roundings into the weights, most in the coordinates whose gradients are near zero, where Adam's update,
# nearly their sign, may turn. The tolerances hold what this matrix measures (docs/measurements.md) with room for other
# CPUs' kernels, and still fail a cell that did not train: every loss here falls by more than 5% (bfloat16's tolerance
# is 3.1%), and LoRA's adapters start at zero, 100% away.
ROUNDOFF = {F32: 2**-24, BF16: 2**-8, F16: 2**-11}
LOSS_UNITS, ADAPTER_UNITS = 8, 32


@pytest.fixture(scope="module")
def lora_base(finished_run):
    return finished_run[0] / "out" / "ckpt.pt"


def train(layout, folder, *args):
    """train.py's stdout in one process, or rank 0's under DDP or FSDP over two; every process must succeed."""
    if layout == SINGLE:
        results = [run_script("train.py", *args, cwd=folder)]
    else:
        results = run_ranks("train.py", *args, f"--fsdp={layout == FSDP}", cwd=folder)
    for result in results:
        assert result.returncode == 0, result.stderr
    return results[0].stdout


def run_cell(folder, feature, dtype, layout, compiled, lora_base):
    """(stdout, out_dir) of train.py with the feature in this cell's dtype, layout and compile."""
    out_dir = f"{feature}-{dtype}-{layout}-{compiled}"
    args = [*COMMON, *FEATURES[feature], f"--dtype={dtype}", f"--compile={compiled}", f"--out_dir={out_dir}"]
    if "lora" in feature:
        args.append(f"--init_from={lora_base}")
    if "chat" in feature and not (folder / "data" / "chat").exists():
        words = sorted({word for word in re.findall(r"[a-z]+", sample_text()) if 3 <= len(word) <= 8})
        (folder / "chats.jsonl").write_text("".join(json.dumps({"messages": [
            {"role": "user", "content": f"Spell {word}."}, {"role": "assistant", "content": "-".join(word)}]}) + "\n"
            for word in words))
        prepare_in(folder, "--input=chats.jsonl", "--tokenizer_from=data/shakespeare_char", "--dataset=chat")
    if feature == "resume":
        first = train(layout, folder, *args, "--max_iters=3")
        return first + train(layout, folder, *args, "--init_from=resume"), out_dir
    return train(layout, folder, *args), out_dir


def relative_difference(a, b):
    """|a - b| / |b|: of numbers, or of the tensors in two state dicts, over all of them together."""
    if isinstance(a, dict):
        return math.sqrt(sum((a[k] - b[k]).pow(2).sum() for k in b) / sum(b[k].pow(2).sum() for k in b))
    return abs(a - b) / abs(b)


def check_cell(feature, cell, stdout):
    """What the feature must show in every cell; returns the (train, val) losses comparable across cells."""
    train_losses, val_losses = parse_losses(stdout)
    assert all(map(math.isfinite, [*train_losses.values(), *val_losses.values()])), cell
    if feature == "patience":
        assert "early stop at iter 3" in stdout and sorted(val_losses) == [0, 3], cell
        return train_losses, val_losses
    if feature == "max_seconds":  # the steps before the schedule's first fit (after step 1) are alike in every cell
        assert "max_seconds=1: " in stdout and "steps fit" in stdout, cell
        return {step: loss for step, loss in train_losses.items() if step <= 1}, {0: val_losses[0]}
    assert sorted(val_losses) == ([0, 3, 6] if feature == "resume" else [0, 6]), cell
    assert sorted(train_losses) == list(range(6)), cell
    if "lora" not in feature:  # LoRA's adapters learn slowly on a tiny base: they are compared instead
        assert val_losses[6] < 0.95 * val_losses[0], cell
    if feature == "eval_hellaswag":
        assert stdout.count(", hellaswag acc_norm ") == 2, cell
    return train_losses, val_losses


@pytest.mark.slow
@pytest.mark.parametrize("feature", FEATURES)
def test_each_feature_trains_alike_in_every_precision_and_layout(char_data, lora_base, feature):
    reference = None  # float32's losses, and LoRA's adapters
    for dtype, layout, compiled in CELLS[feature]:
        cell = f"{feature}: {dtype}, {layout}, compile {compiled}"
        stdout, out_dir = run_cell(char_data, feature, dtype, layout, compiled, lora_base)
        processes = f"{1 if layout == SINGLE else 2} process(es){' (FSDP)' if layout == FSDP else ''}"
        assert f"dtype {dtype}, {processes}, compile {compiled}" in stdout, cell
        losses = check_cell(feature, cell, stdout)
        adapters = {name: value for name, value in weights(char_data / out_dir).items()
                    if "lora_B" in name} if "lora" in feature else None
        reference = reference or (losses, adapters)
        for cell_losses, reference_losses in zip(losses, reference[0]):
            assert sorted(cell_losses) == sorted(reference_losses), cell
            for step, loss in cell_losses.items():
                assert relative_difference(loss, reference_losses[step]) <= LOSS_UNITS * ROUNDOFF[dtype], \
                    (cell, step, losses, reference[0])
        if "lora" in feature:
            assert relative_difference(adapters, reference[1]) <= ADAPTER_UNITS * ROUNDOFF[dtype], cell
        if feature == "resume":
            assert f"resuming from {out_dir}/ckpt.pt at iter 3" in stdout, cell


def weights(folder):
    return torch.load(folder / "ckpt.pt", weights_only=True)["model"]


@pytest.mark.slow
def test_compiled_float32_trains_as_eager(char_data):
    """Compiled as "plain" is above, from the compiler's cache if that ran first: the same losses and weights."""
    eager, compiled = (train(SINGLE, char_data, *COMMON, f"--compile={on}", f"--out_dir={on}") for on in (False, True))
    assert compiled.count("compiled: the first evaluation and step took") == 1
    for compiled_losses, eager_losses in zip(parse_losses(compiled), parse_losses(eager)):
        assert compiled_losses.keys() == eager_losses.keys()
        assert all(compiled_losses[k] == pytest.approx(eager_losses[k], abs=1e-4) for k in eager_losses)
    compiled_weights, eager_weights = weights(char_data / "True"), weights(char_data / "False")
    assert compiled_weights.keys() == eager_weights.keys()  # the model's own names, never "_orig_mod."
    assert all(torch.allclose(compiled_weights[k], eager_weights[k], atol=1e-4) for k in eager_weights)


@pytest.mark.slow
@pytest.mark.parametrize("settings, message", REFUSED)
def test_combinations_that_cannot_work_are_refused_in_one_line(char_data, settings, message):
    """Each process prints the line; once its process group is up, torch.distributed puts its rank before it."""
    for rank, result in enumerate(run_ranks("train.py", *COMMON, *settings, cwd=char_data)):
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
        line = result.stderr.strip().removeprefix(f"[rank{rank}]: ")
        assert line.startswith(f"error: {message}") and "\n" not in line, result.stderr


@pytest.mark.slow
def test_a_run_resumes_in_another_precision(char_data):
    """float32 to float16 starts a gradient scaler (the checkpoint has none), float16 to bfloat16 leaves it."""
    for max_iters, dtype in [(2, F32), (4, F16), (6, BF16)]:
        stdout = train(SINGLE, char_data, *COMMON, f"--max_iters={max_iters}", f"--dtype={dtype}",
                       *(["--init_from=resume"] if max_iters > 2 else []))
        assert f"dtype {dtype}" in stdout and f"step {max_iters}: " in stdout
        scaler = torch.load(char_data / "out" / "ckpt.pt", weights_only=True)["scaler"]
        assert bool(scaler) == (dtype == F16)
