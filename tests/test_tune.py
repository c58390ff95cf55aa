"""
tune.py and what it needs from train.py: early stopping (patience), a time budget (max_seconds), the search space
checked, tiny searches end to end (results, continuing, two workers on one study, in a journal file and in a real
PostgreSQL server), failed and pruned trials, Ctrl-C and kill -9, and clean failures on bad input.
"""

import csv
import importlib.util
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, TINY, assert_clean_error, run_ok, run_script, user_error, with_char_data
from smallgpt.configurator import configure
from smallgpt.metrics import read_metrics
from smallgpt.tuning import script_defaults, search_space, starting_point

optuna = pytest.importorskip("optuna")

TRAIN_DEFAULTS = script_defaults(ROOT / "train.py")
# a tune config for a few trials of a few steps
TINY_SEARCH = """
n_layer = 1
n_head = 2
n_embd = 16
block_size = 16
batch_size = 4
eval_iters = 2
eval_interval = 4
max_iters = 8
lr_decay_iters = 8
warmup_iters = 2
device = "cpu"
log_interval = 4
search = {search}
"""


def write_tune_config(folder, search='{"learning_rate": (1e-3, 1e-2, "log")}', name="tune.py"):
    path = folder / name
    path.write_text(TINY_SEARCH.format(search=search))
    return path


def read_trials(folder):
    with open(folder / "out-tune" / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return with_char_data(tmp_path_factory.mktemp("tune"))


@pytest.fixture
def folder(data, tmp_path):
    """A fresh working folder that shares the module's prepared data."""
    (tmp_path / "data").symlink_to(data / "data")
    return tmp_path


# -----------------------------------------------------------------------------
# the search space

def test_train_settings_are_read_from_its_source_without_running_it():
    assert TRAIN_DEFAULTS["learning_rate"] == 1e-3 and TRAIN_DEFAULTS["n_layer"] == 4
    assert TRAIN_DEFAULTS["compile"] is None and TRAIN_DEFAULTS["dataset"] == "shakespeare_char"
    assert "config" not in TRAIN_DEFAULTS and "SPLIT_STREAMS" not in TRAIN_DEFAULTS


def test_a_search_space_of_ranges_log_ranges_and_choices():
    space = search_space({"learning_rate": (1e-4, 1e-2, "log"), "n_layer": [2, 3], "dropout": (0.0, 0.3),
                          "batch_size": (8, 32), "warmup_iters": (1, 100, "log"), "rotary": [True, False]},
                         TRAIN_DEFAULTS)
    assert space == {"learning_rate": ("float", 1e-4, 1e-2, True), "n_layer": ("choice", [2, 3]),
                     "dropout": ("float", 0.0, 0.3, False), "batch_size": ("int", 8, 32, False),
                     "warmup_iters": ("int", 1, 100, True), "rotary": ("choice", [True, False])}
    assert search_space({"learning_rate": (0, 1)}, TRAIN_DEFAULTS)["learning_rate"] == ("float", 0, 1, False)


def test_a_new_study_starts_from_the_configs_own_values_that_lie_in_the_space():
    space = search_space({"learning_rate": (1e-4, 1e-2, "log"), "n_layer": [2, 3], "dropout": (0.1, 0.3)},
                         TRAIN_DEFAULTS)
    config = {**TRAIN_DEFAULTS, "learning_rate": 3e-3, "n_layer": 4}
    assert starting_point(config, space) == {"learning_rate": 3e-3}  # n_layer 4, dropout 0.0: left to the sampler


def test_the_shipped_search_sets_out_from_the_cpu_recipe_and_trains_what_it_trains():
    tune_config = configure({**TRAIN_DEFAULTS, **script_defaults(ROOT / "tune.py")},
                            [str(ROOT / "config" / "tune_shakespeare_char_cpu.py")])
    recipe = configure(TRAIN_DEFAULTS, [str(ROOT / "config" / "shakespeare_char_cpu.py")])
    space = search_space(tune_config["search"], TRAIN_DEFAULTS)
    assert starting_point(tune_config, space) == {key: recipe[key] for key in space}
    # and every other setting the recipe changes, but its steps, which trials replace by a time (max_seconds), and
    # how often it evaluates
    changed = {key for key in TRAIN_DEFAULTS if recipe[key] != TRAIN_DEFAULTS[key]}
    changed -= {"max_iters", "lr_decay_iters", "eval_interval"}
    assert {key: tune_config[key] for key in changed} == {key: recipe[key] for key in changed}


@pytest.mark.parametrize("search, fragments", [
    ({"learning_rte": (1e-4, 1e-2)}, ["'learning_rte' is not a train.py setting", "did you mean 'learning_rate'"]),
    ({"out_dir": ["a", "b"]}, ["'out_dir' is set by tune.py for each trial"]),
    ({"learning_rate": (1e-2, 1e-4)}, ["empty or reversed range", "low (0.01) must be below high (0.0001)"]),
    ({"dropout": (0.1, 0.1)}, ["empty or reversed range"]),
    ({"learning_rate": (0.0, 1e-2, "log")}, ["a log range must lie above 0"]),
    ({"n_layer": []}, ["empty list of choices"]),
    ({"n_layer": (1.5, 4)}, ["whole number, so its bounds must be too"]),
    ({"n_layer": [2, "three"]}, ["n_layer must be int"]),
    ({"dropout": (0.0, 1.5)}, ["dropout must be in [0, 1)"]),
    ({"learning_rate": (1e-4, 1e-2, "linear")}, ["must be (low, high), (low, high, \"log\") or a list"]),
    ({"dataset": ("a", "b")}, ["a range needs a number setting"]),
    ({}, ["search must map train.py settings to ranges"]),
    (None, ["search must map train.py settings to ranges"]),
])
def test_a_bad_search_space_is_refused_in_one_line(search, fragments):
    user_error(lambda: search_space(search, TRAIN_DEFAULTS), *fragments)


# -----------------------------------------------------------------------------
# searches end to end

def tune(folder, *args, env=None):
    return run_script("tune.py", *args, cwd=folder, env=env)


@pytest.mark.slow
def test_a_tiny_search_writes_its_results_and_continues_when_run_again(folder):
    config = write_tune_config(folder)
    result = tune(folder, config, "--trials=3")
    assert result.returncode == 0, result.stderr
    rows = read_trials(folder)
    assert [row["number"] for row in rows] == ["0", "1", "2"] and {row["state"] for row in rows} == {"complete"}
    assert all(0 < float(row["val_bpb"]) < 10 and float(row["learning_rate"]) > 0 for row in rows)
    assert rows[0]["learning_rate"] == "0.001"  # a new study tries the config's own value (train.py's default) first
    best = min(rows, key=lambda row: float(row["val_bpb"]))
    assert f"best {float(best['val_bpb']):.4f} (trial {best['number']}" in result.stdout
    study = folder / "out-tune"
    assert (study / "history.png").stat().st_size > 0 and (study / "importance.png").stat().st_size > 0
    # only the best trial keeps its checkpoint
    assert [p.parent.name for p in study.glob("trial_*/ckpt.pt")] == [f"trial_{best['number']}"]
    best_py = (study / "best.py").read_text()
    assert "n_embd = 16" in best_py and "learning_rate = " in best_py and "out_dir" not in best_py
    trained = run_ok("train.py", study / "best.py", "--out_dir=out-best", cwd=folder)
    assert "step 8:" in trained
    again = tune(folder, config, "--trials=4")  # the same command, a larger total: one more trial
    assert again.returncode == 0, again.stderr
    assert [row["number"] for row in read_trials(folder)] == ["0", "1", "2", "3"]
    assert "trial 3 complete" in again.stdout and "trial 0 " not in again.stdout


@pytest.mark.slow
def test_a_trial_forked_from_tune_py_trains_as_train_py_alone_does(folder):
    assert tune(folder, write_tune_config(folder), "--trials=1").returncode == 0
    alone = folder / "alone.py"  # the same settings as trial 0 (the config's own), as a train.py config
    alone.write_text(TINY_SEARCH.replace("search = {search}\n", ""))
    run_ok("train.py", alone, "--out_dir=out-alone", cwd=folder)
    losses = [[(r["kind"], r["iter"], r.get("train_loss"), r.get("val_loss")) for r in read_metrics(path)]
              for path in (folder / "out-tune" / "trial_0" / "metrics.jsonl", folder / "out-alone" / "metrics.jsonl")]
    assert losses[0] == losses[1] and len(losses[0]) > 2


@pytest.mark.slow
def test_two_workers_on_one_study_share_the_trials(folder):
    config = write_tune_config(folder)
    workers = [subprocess.Popen([sys.executable, str(ROOT / "tune.py"), str(config), "--trials=4"], cwd=folder,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [worker.communicate(timeout=600) for worker in workers]
    assert all(worker.returncode == 0 for worker in workers), [err for _, err in outputs]
    assert_shared_fairly(read_trials(folder), outputs)


def assert_shared_fairly(rows, outputs):
    """Exactly the 4 trials wanted, each run once, by one worker or the other."""
    complete = [row["number"] for row in rows if row["state"] == "complete"]
    assert len(complete) == 4, rows
    ran = [line.split()[1] for out, _ in outputs for line in out.splitlines() if line.startswith("trial ")
           and " complete:" in line]
    assert sorted(ran, key=int) == sorted(complete, key=int)  # none twice, none lost


@pytest.mark.slow
def test_a_failing_trial_is_recorded_and_the_search_goes_on(folder):
    config = write_tune_config(folder, search='{"n_head": [2, 3]}')  # 16 channels do not split into 3 heads
    result = tune(folder, config, "--trials=3", "--seed=8")  # whose draws are 3, 2, 2, 2
    assert result.returncode == 0, result.stderr
    rows = read_trials(folder)
    failed = [row for row in rows if row["state"] == "fail"]
    assert failed and all("n_embd (16) must be divisible by n_head (3)" in row["error"] for row in failed)
    assert sum(row["state"] == "complete" for row in rows) == 3


@pytest.mark.slow
def test_no_trial_finishing_is_one_line(folder):
    config = write_tune_config(folder, search='{"n_head": [3, 5]}')
    assert_clean_error(tune(folder, config, "--trials=2"), "5 trials in a row failed",
                       "n_embd (16) must be divisible by n_head")
    assert len(read_trials(folder)) == 5


@pytest.mark.slow
def test_a_trial_that_falls_behind_is_pruned(folder):
    ahead = write_tune_config(folder, search='{"learning_rate": (1e-2, 2e-2)}')
    assert tune(folder, ahead, "--trials=1").returncode == 0
    behind = write_tune_config(folder, search='{"learning_rate": (1e-7, 2e-7)}', name="behind.py")
    result = tune(folder, behind, "--trials=2", "--prune_after=1", "--max_iters=40", "--lr_decay_iters=40")
    assert result.returncode == 0, result.stderr
    assert read_trials(folder)[1]["state"] == "pruned"
    log = (folder / "out-tune" / "trial_1" / "train.log").read_text()
    assert "SIGTERM" in log and "step 4:" in log and "step 40:" not in log


def test_a_study_keeps_its_search_space(folder):
    assert tune(folder, write_tune_config(folder, search='{"n_layer": [1, 2]}'), "--trials=1",
                "--max_iters=1").returncode == 0
    other = write_tune_config(folder, search='{"n_layer": [1, 3]}', name="other.py")
    assert_clean_error(tune(folder, other, "--trials=2"), "search['n_layer'] differs from what the study's trial 0",
                       "--study_name or --study_dir")
    assert len(read_trials(folder)) == 1


def start_tune(folder, config, *args):
    # Ctrl-C as at a terminal: a shell ignores SIGINT in the commands it starts in the background (CI may be one)
    return subprocess.Popen([sys.executable, str(ROOT / "tune.py"), str(config), *args], cwd=folder,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for(condition, seconds=120):
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, "timed out waiting"
        time.sleep(0.1)


@pytest.mark.slow
def test_ctrl_c_stops_the_running_trial_and_a_rerun_continues(folder):
    config = write_tune_config(folder)
    args = ["--trials=2", "--max_iters=2000", "--lr_decay_iters=2000"]  # long enough to be stopped
    worker = start_tune(folder, config, *args)
    wait_for(lambda: (folder / "out-tune" / "trial_0" / "metrics.jsonl").exists())
    worker.send_signal(signal.SIGINT)
    out, err = worker.communicate(timeout=120)
    assert "stopped: run the same command to continue" in out, err
    rows = read_trials(folder)
    assert rows[0]["state"] == "fail" and rows[0]["error"] == "stopped by Ctrl-C"
    assert "interrupted at iter" in (folder / "out-tune" / "trial_0" / "train.log").read_text()
    again = tune(folder, config, "--trials=1")
    assert again.returncode == 0 and "trial 1 complete" in again.stdout


@pytest.mark.slow
def test_kill_9_loses_at_most_the_running_trial(folder):
    config = write_tune_config(folder)
    worker = start_tune(folder, config, "--trials=1", "--max_iters=2000", "--lr_decay_iters=2000")
    metrics = folder / "out-tune" / "trial_0" / "metrics.jsonl"
    wait_for(metrics.exists)
    worker.kill()
    worker.communicate()
    # train.py is told (SIGTERM) when tune.py dies, saves and exits
    wait_for(lambda: "interrupted at iter" in (folder / "out-tune" / "trial_0" / "train.log").read_text())
    again = tune(folder, config, "--trials=1")
    assert again.returncode == 0, again.stderr
    assert "trial 0: its worker" in again.stdout and "trial 1 complete" in again.stdout


# -----------------------------------------------------------------------------
# a study in PostgreSQL, shared by two workers

POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")


@pytest.fixture
def postgres():
    """A throwaway PostgreSQL server on a free local port; yields its URL for the psycopg driver."""
    if not (POSTGRES_BIN / "initdb").exists():
        pytest.skip(f"no PostgreSQL binaries in {POSTGRES_BIN}")
    pytest.importorskip("psycopg")
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []  # initdb refuses root
    folder = Path(tempfile.mkdtemp(prefix="tune-postgres-"))  # not under pytest's folders, which postgres cannot enter
    data = folder / "pgdata"
    data.mkdir()
    if as_postgres:
        shutil.chown(folder, "postgres")
        shutil.chown(data, "postgres")
    port = free_port()
    run = lambda *args: subprocess.run([*as_postgres, *map(str, args)], check=True, capture_output=True, text=True)
    try:
        run(POSTGRES_BIN / "initdb", "-D", data, "-U", "postgres", "--auth=trust")
        run(POSTGRES_BIN / "pg_ctl", "-D", data, "-l", folder / "log", "-w", "-o",
            f"-p {port} -k {folder} -h 127.0.0.1", "start")
        try:
            run(POSTGRES_BIN / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "postgres", "tune")
            yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/tune"
        finally:
            run(POSTGRES_BIN / "pg_ctl", "-D", data, "-m", "immediate", "stop")
    finally:
        shutil.rmtree(folder)


@pytest.mark.slow
def test_two_workers_share_a_study_in_postgresql(folder, postgres):
    config = write_tune_config(folder)
    workers = [start_tune(folder, config, "--trials=4", f"--storage={postgres}") for _ in range(2)]
    outputs = [worker.communicate(timeout=600) for worker in workers]
    assert all(worker.returncode == 0 for worker in workers), [err for _, err in outputs]
    assert_shared_fairly(read_trials(folder), outputs)
    assert not (folder / "out-tune" / "journal.log").exists()


# -----------------------------------------------------------------------------
# bad input

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("args, fragments", [
    (["--storage=postgresql+psycopg://user:secret@127.0.0.1:{port}/db"],
     ["cannot open storage postgresql+psycopg://user:***@127.0.0.1:"]),
    (["--storage=nosuchdb://x"], ["cannot open storage nosuchdb://x"]),
    (["--study_dir=afile"], ["cannot create study_dir afile: a file of that name is in the way"]),
    (["--trails=3"], ["did you mean 'trials'"]),
    (["--lerning_rate=0.1"], ["did you mean 'learning_rate'"]),
])
def test_bad_input_is_one_line(tmp_path, args, fragments):
    config = write_tune_config(tmp_path)
    (tmp_path / "afile").write_text("keep")
    args = [arg.format(port=free_port()) for arg in args]
    assert_clean_error(tune(tmp_path, config, *args), *fragments)
    assert (tmp_path / "afile").read_text() == "keep" and "secret" not in " ".join(fragments)


def test_a_missing_database_driver_is_named(tmp_path):
    if importlib.util.find_spec("psycopg2"):
        pytest.skip("psycopg2 is installed")
    config = write_tune_config(tmp_path)
    assert_clean_error(tune(tmp_path, config, f"--storage=postgresql+psycopg2://u@127.0.0.1:{free_port()}/db"),
                       "needs the database driver psycopg2", "pip install 'psycopg[binary]'")


# -----------------------------------------------------------------------------
# train.py: early stopping and a time budget

@pytest.mark.slow
def test_early_stopping_keeps_the_best_model_and_a_resume_asks_for_more(folder):
    # a learning rate far too high: the val loss soon turns up, and stays above its best
    args = [*TINY, "--eval_interval=5", "--max_iters=400", "--lr_decay_iters=400", "--learning_rate=0.05",
            "--decay_lr=False", "--patience=2", "--eval_at_start=False"]
    stdout = run_ok("train.py", *args, cwd=folder)
    stop = next(line for line in stdout.splitlines() if line.startswith("early stop"))
    records = [json.loads(line) for line in (folder / "out" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    best = min(evals, key=lambda r: r["val_loss"])
    assert [r["kind"] for r in records][-1] == "early_stop"
    assert records[-1]["best_iter"] == best["iter"] and evals[-1]["iter"] == best["iter"] + 2 * 5
    assert f"best val loss {best['val_loss']:.4f} at iter {best['iter']}" in stop
    checkpoint = torch.load(folder / "out" / "ckpt.pt", weights_only=True)
    assert checkpoint["iter_num"] == best["iter"] and checkpoint["stopped_early"]["iter"] == evals[-1]["iter"]
    run_ok("sample.py", "--num_samples=1", "--max_new_tokens=20", "--device=cpu", cwd=folder)
    assert_clean_error(run_script("train.py", *args, "--init_from=resume", cwd=folder), "stopped early at iter",
                       "raise --patience or --max_iters")
    resumed = run_ok("train.py", *args, "--init_from=resume", "--patience=4", cwd=folder)
    assert f"resuming from out/ckpt.pt at iter {best['iter']}" in resumed


@pytest.mark.slow
def test_max_seconds_fits_the_schedule_to_the_time(folder):
    stdout = run_ok("train.py", *TINY, "--max_seconds=8", "--max_iters=100000", "--eval_interval=50", cwd=folder)
    fits = [line for line in stdout.splitlines() if line.startswith("max_seconds=8:")]
    steps = int(fits[-1].split(": ")[1].split()[0])  # fitted after ten steps, then again at every evaluation
    assert len(fits) >= 2 and 20 < steps < 100000 and f"step {steps}:" in stdout  # evaluated at the end, and done
    records = [json.loads(line) for line in (folder / "out" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["kind"] == "eval" and records[-1]["iter"] == steps
    # ends near the time asked (the final evaluation comes after it), however fast this machine is today
    assert 8 * 0.5 < records[-1]["elapsed"] < 8 * 1.5
    lrs = [r["lr"] for r in records if r["kind"] == "iter"]
    assert lrs[-1] < 2e-4  # the cosine reached min_lr at the horizon, not at max_iters


def test_trials_are_compared_at_equal_shares_of_their_time_or_steps():
    from smallgpt.tuning import progress_reports

    def steps(record, last_step, max_seconds):
        reports, _ = progress_reports({**record, "val_bpb": 2.5}, None, last_step, max_seconds, 1000)
        return [step for step, _ in reports]
    assert steps({"iter": 300, "elapsed": 40.0}, -1, 0) == [5, 10, 15, 20, 25, 30]  # in steps
    # 40s of 100: reported at 5%, 10%, ... 40%; then from 45% on
    assert steps({"iter": 300, "elapsed": 40.0}, -1, 100) == list(range(5, 41, 5))
    assert steps({"iter": 400, "elapsed": 52.0}, 40, 100) == [45, 50]
    assert steps({"iter": 100, "elapsed": 4.0}, -1, 100) == []  # before the first 5%
    assert steps({"iter": 100, "elapsed": 104.0}, 95, 100) == [100]  # the last, past the time


def test_values_between_evaluations_are_read_off_the_line_between_them():
    from smallgpt.tuning import progress_reports
    first, before = progress_reports({"iter": 100, "elapsed": 30.0, "val_bpb": 2.9}, None, -1, 100, 1000)
    assert [value for _, value in first] == [math.inf] * 6 and before == (0.3, 2.9)  # nothing known before it
    # evaluations at 30% (2.9) and 52% (2.5): at 45%, 2.9 - 0.4 * 15 / 22
    reports, now = progress_reports({"iter": 400, "elapsed": 52.0, "val_bpb": 2.5}, before, 30, 100, 1000)
    assert [step for step, _ in reports] == [35, 40, 45, 50] and now == (0.52, 2.5)
    assert reports[2][1] == pytest.approx(2.9 - 0.4 * 15 / 22)
    # a worse evaluation does not undo the best: the line stays flat
    reports, now = progress_reports({"iter": 900, "elapsed": 101.0, "val_bpb": 3.1}, (0.9, 2.5), 90, 100, 1000)
    assert reports == [(95, 2.5), (100, 2.5)] and now == (1.01, 2.5)
