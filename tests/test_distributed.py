"""
Scaling out on CPU: DDP and FSDP2 over gloo train the same model as one process, under torchrun itself or as it
starts the processes (run_ranks); tests/test_matrix.py runs every feature under both, in every precision.
"""

import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, TINY, assert_clean_error, parse_losses, run_ranks, run_script

COMMON = [*TINY, "--log_interval=1", "--lr_decay_iters=24", "--eval_interval=8"]


def torchrun(cwd, *args, nproc=2, timeout=600):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               str(ROOT / "train.py"), *COMMON, *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def single(cwd, *args):
    result = run_script("train.py", *COMMON, *args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result


def weights(folder):
    return torch.load(folder / "ckpt.pt", weights_only=True)["model"]


def max_difference(a, b):
    assert sorted(a) == sorted(b)
    return max((a[k] - b[k]).abs().max().item() for k in a)


MUON = ["--muon_learning_rate=0.02", "--rotary=True", "--qk_norm=True"]
MEMORY = ["--activation_checkpointing=True", "--chunked_loss=True"]


def ranks(cwd, *args):
    """rank 0's CompletedProcess of train.py run as torchrun runs it over two processes (forks of this one)."""
    results = run_ranks("train.py", *COMMON, *args, cwd=cwd)
    for result in results:
        assert result.returncode == 0, result.stderr
    assert not results[1].stdout  # rank 0 alone logs
    return results[0]


@pytest.mark.slow
@pytest.mark.parametrize("mode, accumulation, options", [("ddp", 2, []), ("fsdp", 2, []), ("ddp", 1, []),
                                                         ("ddp", 2, MUON), ("ddp", 2, MEMORY), ("fsdp", 2, MEMORY)])
def test_two_processes_train_the_same_model_as_one(char_data, mode, accumulation, options):
    """
    With accumulation 2 each process takes one micro-batch; with 1, half of it (the default under torchrun).
    Under Muon every process orthogonalizes the same averaged gradients.
    """
    args = ["--max_iters=8", f"--gradient_accumulation_steps={accumulation}", *options]
    one = parse_losses(single(char_data, *args, "--out_dir=one").stdout)
    result = ranks(char_data, *args, f"--out_dir={mode}", f"--fsdp={mode == 'fsdp'}")
    assert "2 process(es)" in result.stdout and result.stdout.count("step 8:") == 1
    two = parse_losses(result.stdout)
    for it in range(8):  # the logged loss is the mean over the whole global batch
        assert two[0][it] == pytest.approx(one[0][it], abs=2e-4)
    assert two[1][8] == pytest.approx(one[1][8], abs=2e-4)  # the eval loss is averaged over the processes
    assert max_difference(weights(char_data / "one"), weights(char_data / mode)) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("layout, options", [("--fsdp=True", ["--eval_iters=3", "--gradient_accumulation_steps=2"]),
                                             ("--fsdp=False", ["--eval_iters=1", "--rotary=True"])])
def test_evaluation_under_torchrun_when_the_processes_do_not_divide_eval_iters(char_data, layout, options):
    """Every forward pass of FSDP, and DDP's first with rotary buffers, needs every process: none may skip one."""
    args = ["--max_iters=2", "--eval_interval=2", *options]
    one = parse_losses(single(char_data, *args, "--out_dir=one").stdout)
    result = torchrun(char_data, *args, "--out_dir=two", layout, timeout=180)  # a hang would take forever
    assert result.returncode == 0, result.stderr
    two = parse_losses(result.stdout)
    assert sorted(two[1]) == [0, 2] and two[1][2] == pytest.approx(one[1][2], abs=2e-4)  # the same batches


@pytest.mark.slow
def test_a_checkpoint_resumes_under_any_process_layout(char_data):
    """One process, then FSDP over two, then DDP over two, then one again: the same weights as one straight run."""
    single(char_data, "--max_iters=24", "--out_dir=straight", "--gradient_accumulation_steps=2")
    single(char_data, "--max_iters=6", "--out_dir=relay", "--gradient_accumulation_steps=2")
    for max_iters, layout in [(12, "--fsdp=True"), (18, "--fsdp=False")]:
        result = torchrun(char_data, f"--max_iters={max_iters}", "--out_dir=relay", "--init_from=resume", layout,
                          "--gradient_accumulation_steps=2")
        assert result.returncode == 0, result.stderr
        assert f"resuming from relay/ckpt.pt at iter {max_iters - 6}" in result.stdout
    single(char_data, "--max_iters=24", "--out_dir=relay", "--init_from=resume", "--gradient_accumulation_steps=2")
    assert max_difference(weights(char_data / "straight"), weights(char_data / "relay")) < 1e-5


@pytest.mark.slow
def test_under_fsdp_a_finetune_saved_at_its_start_and_resumed_trains_as_one_straight_run(char_data):
    """A finetune saves its start (iter 0), before the optimizer has any state: saving must not make one (torch's FSDP
    state dict would, with a step of its own), and resuming from it must start the optimizer afresh."""
    single(char_data, "--max_iters=4", "--out_dir=base")
    finetune = ["--init_from=base/ckpt.pt", "--fsdp=True", "--eval_interval=8"]
    ranks(char_data, *finetune, "--max_iters=8", "--out_dir=straight", "--eval_at_start=False")  # no save at 0
    ranks(char_data, *finetune, "--max_iters=0", "--out_dir=relay")  # its start alone
    assert torch.load(char_data / "relay" / "ckpt.pt", weights_only=True)["iter_num"] == 0
    resumed = ranks(char_data, *finetune, "--max_iters=8", "--out_dir=relay", "--init_from=resume")
    assert "resuming from relay/ckpt.pt at iter 0" in resumed.stdout
    assert max_difference(weights(char_data / "straight"), weights(char_data / "relay")) < 1e-5


@pytest.mark.slow
def test_accumulation_steps_or_batch_size_must_divide_by_the_processes(char_data):
    result = torchrun(char_data, "--max_iters=2", "--gradient_accumulation_steps=3", "--batch_size=9")
    assert result.returncode != 0
    assert ("error: gradient_accumulation_steps (3) must be divisible by the number of processes (2), "
            "or else batch_size (9) must be") in result.stderr


@pytest.mark.slow
def test_fsdp_needs_torchrun(char_data):
    assert_clean_error(run_script("train.py", *TINY, "--fsdp=True", cwd=char_data), "launch with torchrun")


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["--fsdp=False", "--fsdp=True"])
def test_lora_trains_the_same_adapters_under_torchrun(char_data, layout):
    single(char_data, "--max_iters=4", "--out_dir=base")
    lora = ["--max_iters=6", "--init_from=base/ckpt.pt", "--lora_rank=4", "--learning_rate=1e-2",
            "--gradient_accumulation_steps=2", *MEMORY]
    one = parse_losses(single(char_data, *lora, "--out_dir=one").stdout)
    two = parse_losses(ranks(char_data, *lora, "--out_dir=two", layout).stdout)
    assert all(two[0][it] == pytest.approx(one[0][it], abs=2e-4) for it in range(6))
    adapters = weights(char_data / "two")
    assert all("lora_" in name for name in adapters) and max_difference(weights(char_data / "one"), adapters) < 1e-5
