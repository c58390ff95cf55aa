"""train.py under interruption: Ctrl-C and SIGTERM save and exit, kill -9 never corrupts ckpt.pt, divergence stops."""

import os
import signal
import subprocess
import sys

import pytest
import torch

from conftest import RunsCode, ROOT, TINY, assert_clean_error, inside, parse_losses, run_script, user_error
from smallgpt.checkpoint import read_for_resuming

SCHEDULE = ["--lr_decay_iters=40", "--eval_interval=20", "--log_interval=1", "--dropout=0.1"]


def start_training(cwd, *args):
    """Start train.py with unbuffered output, so that its log can be read line by line as it is written."""
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *TINY, *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def read_until(process, marker, times=1):
    """Read the process's stdout until `marker` has begun `times` lines; return everything read."""
    seen, lines = 0, []
    while seen < times:
        line = process.stdout.readline()
        assert line, f"train.py ended before {marker!r}: {''.join(lines)}{process.stderr.read()}"
        lines.append(line)
        seen += line.startswith(marker)
    return "".join(lines)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_a_checkpoint_that_resumes_exactly(char_data, signum):
    straight = run_script("train.py", *TINY, *SCHEDULE, "--max_iters=40", "--out_dir=straight", cwd=char_data)
    assert straight.returncode == 0, straight.stderr
    process = start_training(char_data, *SCHEDULE, "--max_iters=100000")
    head = read_until(process, "iter 5:")
    process.send_signal(signum)
    tail, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert f"{signum.name}: finishing this step, then saving a checkpoint" in tail
    checkpoint = torch.load(char_data / "out" / "ckpt.pt", weights_only=True)
    stopped_at = checkpoint["iter_num"]
    assert f"interrupted at iter {stopped_at}: checkpoint saved to out/ckpt.pt" in tail
    assert 5 < stopped_at < 40 and f"iter {stopped_at - 1}:" in head + tail
    resumed = run_script("train.py", *TINY, *SCHEDULE, "--max_iters=40", "--init_from=resume", cwd=char_data)
    assert resumed.returncode == 0, resumed.stderr
    expected, got = parse_losses(straight.stdout)[0], parse_losses(resumed.stdout)[0]
    assert sorted(got) == list(range(stopped_at, 40))
    assert all(got[i] == expected[i] for i in got)


@pytest.mark.slow
def test_a_second_ctrl_c_quits_at_once(char_data):
    process = start_training(char_data, "--eval_iters=5000")  # the first evaluation takes seconds
    read_until(process, "number of parameters")
    process.send_signal(signal.SIGINT)
    read_until(process, "SIGINT: finishing this step")
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 1 and "Traceback" not in stderr
    assert stderr.strip() == "SIGINT again: quitting at once, without saving"
    assert not (char_data / "out" / "ckpt.pt").exists()


@pytest.mark.slow
def test_kill_9_leaves_a_loadable_resumable_checkpoint(char_data):
    process = start_training(char_data, "--max_iters=100000", "--eval_interval=1", "--always_save_checkpoint=True")
    read_until(process, "saving checkpoint", times=5)
    process.kill()
    process.wait()
    checkpoint = torch.load(char_data / "out" / "ckpt.pt", weights_only=True)
    assert checkpoint["iter_num"] >= 4
    resumed = run_script("train.py", *TINY, "--max_iters=" + str(checkpoint["iter_num"] + 3), "--init_from=resume",
                         cwd=char_data)
    assert resumed.returncode == 0, resumed.stderr
    assert not list((char_data / "out").glob("*.tmp"))  # the resumed run's clean saves leave none behind


@pytest.mark.slow
def test_divergence_stops_with_the_iteration_and_the_last_good_checkpoint(char_data):
    run = lambda *args: run_script("train.py", *TINY, "--log_interval=1", "--grad_clip=0.0", "--warmup_iters=0",
                                   *args, cwd=char_data)
    assert_clean_error(run("--learning_rate=1e6", "--max_iters=30"), "training diverged", "at iter ",
                       "no checkpoint was saved")
    assert run("--max_iters=2", "--eval_interval=2").returncode == 0
    result = run("--learning_rate=1e6", "--max_iters=30", "--init_from=resume", "--eval_interval=1",
                 "--always_save_checkpoint=True")
    assert_clean_error(result, "training diverged", "the last good checkpoint is out/ckpt.pt")
    checkpoint = torch.load(char_data / "out" / "ckpt.pt", weights_only=True)
    assert checkpoint["iter_num"] == 2  # saved before the first diverged step, never after
    assert all(torch.isfinite(w).all() for w in checkpoint["model"].values())


def test_resuming_never_unpickles_code(tmp_path):
    (tmp_path / "out").mkdir()
    torch.save({"model": RunsCode()}, tmp_path / "out" / "ckpt.pt")
    with inside(tmp_path):
        user_error(lambda: read_for_resuming("out/ckpt.pt", {}, {}, {}), "not a readable checkpoint")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.slow
def test_ctrl_c_under_torchrun_saves_from_every_process(char_data):
    """A terminal's Ctrl-C reaches torchrun, which passes SIGINT on to each worker: they stop together and save."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(ROOT / "train.py"), *TINY, "--max_iters=100000", "--log_interval=1"]
    process = subprocess.Popen(command, cwd=char_data, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    read_until(process, "iter 5:")
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C does: signal the terminal's foreground process group
    tail, _ = process.communicate(timeout=120)
    stopped_at = torch.load(char_data / "out" / "ckpt.pt", weights_only=True)["iter_num"]
    assert f"interrupted at iter {stopped_at}: checkpoint saved to out/ckpt.pt" in tail
    resumed = run_script("train.py", *TINY, f"--max_iters={stopped_at + 2}", "--init_from=resume", cwd=char_data)
    assert resumed.returncode == 0, resumed.stderr
