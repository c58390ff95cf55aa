"""What a run shows: metrics.jsonl, loss.png, the ETA and the summary line, and wandb."""

import importlib.util
import json
import re
import shutil
import struct
import subprocess
import sys

import pytest

from conftest import ROOT, TINY, assert_clean_error, parse_losses, run_script
from smallgpt.files import replaced_atomically
from smallgpt.metrics import pyplot, save_figure

ARGS = [*TINY, "--log_interval=5", "--eval_interval=10", "--lr_decay_iters=30"]
TOKENS_PER_ITER = 8 * 32  # batch_size x block_size of TINY


def train(cwd, *args):
    result = run_script("train.py", *ARGS, *args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result


def read_metrics(folder):
    with open(folder / "out" / "metrics.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
def test_the_eta_leaves_out_the_first_step(char_data):
    # the first step carries the first evaluation, made long here; the steps after it are short
    result = train(char_data, "--max_iters=300", "--eval_interval=1000", "--eval_iters=150", "--log_interval=10")
    first_step = float(re.search(r"^iter 0: .*, time ([\d.]+)ms", result.stdout, re.M).group(1)) / 1000
    eta = int(re.search(r"^iter 10: .*, eta (\d+)s$", result.stdout, re.M).group(1))
    # spreading the first step over the first 11 would estimate at least first_step * 289 / 11 for the other 289
    assert eta < first_step * 289 / 11 / 2


@pytest.mark.slow
def test_metrics_file_plot_eta_and_summary(finished_run):
    char_data, stdout = finished_run
    records = read_metrics(char_data)
    steps = [r for r in records if r["kind"] == "iter"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["iter"] for r in steps] == [0, 5, 10, 15, 20, 25]
    assert [r["iter"] for r in evals] == [0, 10, 20, 30]
    logged_train, logged_val = parse_losses(stdout)
    for r in steps:
        assert set(r) == {"kind", "iter", "tokens", "train_loss", "lr", "tokens_per_sec", "mfu", "elapsed"}
        assert r["tokens"] == (r["iter"] + 1) * TOKENS_PER_ITER
        assert round(r["train_loss"], 4) == logged_train[r["iter"]]
        assert r["tokens_per_sec"] > 0 and 0 <= r["mfu"] < 2
    for r in evals:
        assert set(r) == {"kind", "iter", "tokens", "train_loss", "val_loss", "train_bpb", "val_bpb", "lr", "elapsed"}
        assert r["tokens"] == r["iter"] * TOKENS_PER_ITER and round(r["val_loss"], 4) == logged_val[r["iter"]]
    assert steps[1]["lr"] == pytest.approx(1e-3 * 6 / 6)  # warmup_iters=5: the peak at iter 5
    elapsed = [r["elapsed"] for r in records]
    assert elapsed == sorted(elapsed)
    assert re.search(r"^iter 5: loss \d\.\d{4}, time [\d.]+ms, mfu -?[\d.]+%, eta \d+s$", stdout, re.M)
    # the first step's time is mostly start-up: no estimate of the time left from it alone
    assert re.search(r"^iter 0: loss \d\.\d{4}, time [\d.]+ms, mfu -?[\d.]+%$", stdout, re.M)
    best = min(evals, key=lambda r: r["val_loss"])
    assert f"done: best val loss {best['val_loss']:.4f} at iter {best['iter']}, " in stdout
    assert stdout.rstrip().endswith("tokens/s")
    png = (char_data / "out" / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    assert struct.unpack(">II", png[16:24]) == (800, 450)
    assert len(png) > 20_000  # curves, labels and a legend, not a blank canvas
    assert not list((char_data / "out").glob("*.tmp"))


def png_title(path):
    """The Title of a PNG's text chunks."""
    png, at = path.read_bytes(), 8
    while at < len(png):
        length, kind = struct.unpack(">I4s", png[at:at + 8])
        if kind == b"tEXt" and png[at + 8:at + 14] == b"Title\0":
            return png[at + 14:at + 8 + length].decode("latin-1")
        at += 12 + length


@pytest.mark.slow
def test_the_plots_title_gives_the_models_shape_not_the_settings(finished_run, tmp_path):
    shutil.copytree(finished_run[0], tmp_path / "run", symlinks=True)
    run_script("train.py", *TINY, "--n_layer=6", "--n_embd=384", "--init_from=out/ckpt.pt", "--max_iters=2",
               "--eval_interval=2", "--out_dir=finetuned", cwd=tmp_path / "run")
    assert png_title(tmp_path / "run" / "finetuned" / "loss.png").startswith("shakespeare_char: 2 layers x 32, ")
    run_script("train.py", *TINY, "--n_layer=0", "--max_iters=2", "--eval_interval=2", "--out_dir=bigram",
               cwd=tmp_path / "run")
    assert png_title(tmp_path / "run" / "bigram" / "loss.png").startswith("shakespeare_char: the bigram, ")


@pytest.mark.slow
def test_metrics_py_redraws_the_plot_from_a_finished_run(finished_run, tmp_path):
    char_data = tmp_path
    shutil.copytree(finished_run[0] / "out", char_data / "out")
    plot = char_data / "out" / "loss.png"
    plot.unlink()
    # python -m smallgpt.metrics, from the checkout as the README has it
    result = subprocess.run([sys.executable, "-m", "smallgpt.metrics", str(char_data / "out" / "metrics.jsonl")],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    png = plot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (800, 450) and len(png) > 20_000


@pytest.mark.slow
def test_a_resumed_run_continues_the_metrics(char_data):
    train(char_data, "--max_iters=20")
    first = read_metrics(char_data)
    train(char_data, "--max_iters=30", "--init_from=resume")
    records = read_metrics(char_data)
    before_resume = [r for r in first if r["iter"] < 20]  # the resumed run evaluates iter 20 again
    assert records[:len(before_resume)] == before_resume and len(records) > len(first)
    assert [r["iter"] for r in records if r["kind"] == "iter"] == [0, 5, 10, 15, 20, 25]
    assert [r["iter"] for r in records if r["kind"] == "eval"] == [0, 10, 20, 30]
    assert [r["elapsed"] for r in records] == sorted(r["elapsed"] for r in records)  # one clock across both


@pytest.mark.slow
def test_resuming_an_earlier_checkpoint_drops_the_metrics_it_replaces(char_data):
    train(char_data, "--max_iters=20", "--always_save_checkpoint=False", "--eval_iters=1", "--learning_rate=0.05")
    train(char_data, "--max_iters=30", "--init_from=resume", "--eval_iters=1", "--learning_rate=0.05")
    iters = [r["iter"] for r in read_metrics(char_data) if r["kind"] == "iter"]
    assert iters == sorted(set(iters))  # no iteration twice, whichever checkpoint was resumed


@pytest.mark.slow
def test_eval_only_leaves_the_metrics_alone(finished_run, tmp_path):
    char_data = tmp_path / "run"
    shutil.copytree(finished_run[0], char_data)
    before = (char_data / "out" / "metrics.jsonl").read_bytes(), (char_data / "out" / "loss.png").read_bytes()
    train(char_data, "--max_iters=30", "--init_from=resume", "--eval_only=True")
    assert ((char_data / "out" / "metrics.jsonl").read_bytes(), (char_data / "out" / "loss.png").read_bytes()) == before


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed")
def test_wandb_log_without_wandb_is_a_clean_error(char_data):
    assert_clean_error(run_script("train.py", *ARGS, "--wandb_log=True", cwd=char_data), "pip install wandb")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb is not installed")
def test_wandb_log_works_offline(char_data):
    result = run_script("train.py", *ARGS, "--max_iters=10", "--wandb_log=True", "--wandb_run_name=tiny", cwd=char_data,
                        env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    assert result.returncode == 0, result.stderr
    runs = list((char_data / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_two_writers_of_one_plot_at_once_both_succeed_and_the_last_wins(tmp_path):
    """As two tune.py workers drawing a study's history.png together: each writes a file of its own, then renames it."""
    path = str(tmp_path / "history.png")
    plt = pyplot()
    figures = []
    for title in ("first", "second"):
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.set_title(title)
        figures.append(fig)
    first = tmp_path / "first.png"
    figures[0].savefig(first, format="png", dpi=100)
    with replaced_atomically(path, what="plot") as [tmp]:
        figures[0].savefig(tmp, format="png", dpi=100)
        save_figure(figures[1], path)  # the other writer, done while this one writes
    assert (tmp_path / "history.png").read_bytes() == first.read_bytes()  # the last to finish
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.png", "history.png"]
