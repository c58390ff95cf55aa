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

from conftest import (ROOT, TINY, assert_clean_error, needs_gpt2_bpe, prepare_in, run_ok, run_script, sample_text,
                      script_error, user_error, with_char_data)
from smallgpt.budget import TimeBudget
from smallgpt.configurator import configure, ranges_in, script_settings
from smallgpt.metrics import read_metrics
from smallgpt.tune_results import best_config
from smallgpt.tune_space import check_trial_settings, search_space, starting_point, suggest
from smallgpt.tune_study import (claim_study_dir, deferred_ctrl_c, drop_checkpoints_but_the_best, fail_stale_trials,
                                 make_trial_dir, open_study, this_worker)
from smallgpt.tune_trials import new_records, progress_reports, run_trial

optuna = pytest.importorskip("optuna")

TRAIN_DEFAULTS, TRAIN_RANGES = script_settings(ROOT / "train.py"), ranges_in(ROOT / "train.py")
space_of = lambda search: search_space(search, TRAIN_DEFAULTS, TRAIN_RANGES)  # as tune.py reads a search
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
                         TRAIN_DEFAULTS, TRAIN_RANGES)
    assert space == {"learning_rate": ("float", 1e-4, 1e-2, True), "n_layer": ("choice", [2, 3]),
                     "dropout": ("float", 0.0, 0.3, False), "batch_size": ("int", 8, 32, False),
                     "warmup_iters": ("int", 1, 100, True), "rotary": ("choice", [True, False])}
    assert space_of({"learning_rate": (0, 1)})["learning_rate"] == ("float", 0, 1, False)


def test_a_new_study_starts_from_the_configs_own_values_that_lie_in_the_space():
    space = search_space({"learning_rate": (1e-4, 1e-2, "log"), "n_layer": [2, 3], "dropout": (0.1, 0.3)},
                         TRAIN_DEFAULTS, TRAIN_RANGES)
    config = {**TRAIN_DEFAULTS, "learning_rate": 3e-3, "n_layer": 4}
    assert starting_point(config, space) == {"learning_rate": 3e-3}  # n_layer 4, dropout 0.0: left to the sampler


def test_the_shipped_search_sets_out_from_the_cpu_recipe_and_trains_what_it_trains():
    tune_config = configure({**TRAIN_DEFAULTS, **script_settings(ROOT / "tune.py")},
                            [str(ROOT / "config" / "tune_shakespeare_char_cpu.py")])
    recipe = configure(TRAIN_DEFAULTS, [str(ROOT / "config" / "shakespeare_char_cpu.py")])
    space = space_of(tune_config["search"])
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
    user_error(lambda: space_of(search), *fragments)


@pytest.mark.parametrize("settings, search, fragments", [
    ({"init_from": "resume"}, {}, ["init_from='resume' cannot start a trial"]),
    ({}, {"init_from": ["scratch", "resume"]}, ["init_from='resume' cannot start a trial"]),
    ({"eval_only": True}, {}, ["eval_only=True trains nothing"]),
])
def test_settings_a_trial_cannot_train_with_are_refused(settings, search, fragments):
    config = {**TRAIN_DEFAULTS, **settings}
    space = space_of({"learning_rate": (1e-4, 1e-2), **search})
    user_error(lambda: check_trial_settings(config, space), *fragments)
    finetuning = space_of({"learning_rate": (1e-4, 1e-2), "init_from": ["gpt2", "gpt2-medium"]})
    check_trial_settings({**TRAIN_DEFAULTS, "init_from": "gpt2"}, finetuning)  # a finetuning search is fine


# -----------------------------------------------------------------------------
# the study's bookkeeping, in process on a journal file

def new_study(folder, name="s", seed=0, prune_after=5):
    return open_study("", name, str(folder), seed, prune_after)


def test_workers_that_open_a_study_at_once_draw_different_settings(tmp_path):
    space = space_of({"learning_rate": (1e-4, 1e-2, "log"), "n_layer": [1, 2, 3, 4, 5, 6]})
    workers = [new_study(tmp_path), new_study(tmp_path)]  # both opened before either asked: the same seed each
    draws = []
    for _ in range(3):
        for study in workers:
            draws.append(tuple(suggest(study.ask(), space).items()))
    assert len(set(draws)) == len(draws)
    # and a search repeats: trial n's draw depends on the seed and n, not on which worker drew it
    (tmp_path / "again").mkdir()
    again = new_study(tmp_path / "again")
    assert [tuple(suggest(again.ask(), space).items()) for _ in range(6)] == draws


def running_trial(study, worker, heartbeat):
    trial = study.ask()
    trial.set_user_attr("worker", worker)
    if heartbeat is not None:
        trial.set_user_attr("heartbeat", heartbeat)
    return trial.number


def test_running_trials_whose_worker_is_gone_are_failed_here_and_elsewhere(tmp_path, capsys):
    study = new_study(tmp_path)
    host = socket.gethostname()
    dead = next(pid for pid in range(2**22 - 1, 1, -1) if not os.path.exists(f"/proc/{pid}"))  # a pid no process has
    now = time.time()
    numbers = {
        "elsewhere, silent": running_trial(study, "other-host:123", now - 3600),
        "elsewhere, beating": running_trial(study, "other-host:124", now - 5),
        "here, process gone": running_trial(study, f"{host}:{dead}", now),
        "here, pid now ours (a restarted container)": running_trial(study, this_worker(), now),
        "here, alive": running_trial(study, f"{host}:{os.getppid()}", now),
        "no worker yet, just asked": running_trial(study, "", None),
    }
    fail_stale_trials(study)
    states = {what: study.trials[number].state.name for what, number in numbers.items()}
    assert states == {"elsewhere, silent": "FAIL", "elsewhere, beating": "RUNNING", "here, process gone": "FAIL",
                      "here, pid now ours (a restarted container)": "FAIL", "here, alive": "RUNNING",
                      "no worker yet, just asked": "RUNNING"}
    out = capsys.readouterr().out
    assert f"trial {numbers['elsewhere, silent']}: no heartbeat from its worker other-host:123 for 36" in out


def test_one_reading_of_the_study_decides_which_checkpoint_stays(tmp_path, monkeypatch):
    study = new_study(tmp_path)
    first, second = study.ask(), study.ask()
    for trial in (first, second):
        (tmp_path / f"trial_{trial.number}").mkdir()
        (tmp_path / f"trial_{trial.number}" / "ckpt.pt").write_text("weights")
    study.tell(first, 2.0)
    other_worker = new_study(tmp_path)
    real_get_trials = study.get_trials

    def then_the_other_worker_completes_a_better_trial(*args, **kwargs):
        trials = real_get_trials(*args, **kwargs)
        if other_worker.trials[second.number].state.name == "RUNNING":
            other_worker.tell(second.number, 1.0)
        return trials
    monkeypatch.setattr(study, "get_trials", then_the_other_worker_completes_a_better_trial)
    drop_checkpoints_but_the_best(study, str(tmp_path))
    assert (tmp_path / f"trial_{second.number}" / "ckpt.pt").exists()  # running when read: kept
    drop_checkpoints_but_the_best(new_study(tmp_path), str(tmp_path))
    assert sorted(p.parent.name for p in tmp_path.glob("trial_*/ckpt.pt")) == [f"trial_{second.number}"]


def test_a_study_dir_holds_one_studys_files(tmp_path):
    claim_study_dir(str(tmp_path), "", "first")
    claim_study_dir(str(tmp_path), "", "first")  # the same study again, or another of its workers
    user_error(lambda: claim_study_dir(str(tmp_path), "", "second"),
               f"{tmp_path} holds the files of study 'first' in journal.log", "give study 'second' a --study_dir")
    user_error(lambda: claim_study_dir(str(tmp_path), "sqlite:///x.db", "first"), "give study 'first'")
    assert make_trial_dir(str(tmp_path), 0) == str(tmp_path / "trial_0")
    user_error(lambda: make_trial_dir(str(tmp_path), 0), "trial_0 is there already, from another study")
    (tmp_path / "study.json").write_text("{not json")
    user_error(lambda: claim_study_dir(str(tmp_path), "", "first"), "is not the record that tune.py writes")


def test_the_metrics_reader_notices_a_replaced_or_shortened_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    records, seen = new_records(str(path))
    assert records == []
    path.write_text('{"iter": 0}\n{"iter": 1}\n{"iter"')  # the last line is still being written
    records, seen = new_records(str(path), seen)
    assert records == [{"iter": 0}, {"iter": 1}]
    with open(path, "a") as f:
        f.write(': 2}\n')
    assert new_records(str(path), seen)[0] == [{"iter": 2}]
    replacement = tmp_path / "new.jsonl"
    replacement.write_text('{"iter": 0, "run": "new"}\n' * 5)  # longer than what was read: the offset would fit
    os.replace(replacement, path)
    assert new_records(str(path), seen)[0] == [{"iter": 0, "run": "new"}] * 5
    records, seen = new_records(str(path), new_records(str(path), seen)[1])
    path.write_text('{"iter": 7}\n')  # cut short in place
    assert new_records(str(path), seen)[0] == [{"iter": 7}]


def test_best_py_holds_the_settings_recorded_with_the_trial():
    text = best_config({"n_layer": 1, "init_from": "gpt2"}, {"learning_rate": 0.003})
    config = {}
    exec(text, config)
    assert {k: config[k] for k in ("n_layer", "init_from", "learning_rate")} == {
        "n_layer": 1, "init_from": "gpt2", "learning_rate": 0.003}


def test_a_ctrl_c_waits_for_the_end_of_a_deferred_block():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_ctrl_c():
            os.kill(os.getpid(), signal.SIGINT)
            done.append("the rest of the block")
    assert done == ["the rest of the block"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def spin(seconds):
    """Keep the CPU busy for this long: the work of a training step, as the clock sees it."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_the_time_budget_follows_the_pace_of_the_recent_steps():
    budget = TimeBudget(100.0, 1000, "cpu")
    fits = [budget.fit(10 * k, verbose=False) for k in range(8)]  # fast steps: nothing between the fits
    assert fits[0] is False and all(fits[1:])
    for k in range(8, 8 + 6):  # then the machine slows down: 10 steps take 50 ms
        spin(0.05)
        budget.fit(10 * k, verbose=False)
    assert 0.004 < budget.pace < 0.0065  # the steps since the fifth fit back, not the mean since the start
    assert abs(budget.steps - (130 + (100.0 - budget.spent()) / budget.pace)) < 2


def test_the_schedule_goes_on_from_where_it_is_when_the_end_is_fitted_anew():
    """A fit moves the end of the learning rate's decay, never the share of it done: no jump at a refit."""
    budget = TimeBudget(100.0, 1000, "cpu")
    budget.set_steps(2, 1002)  # the first fit: the decay starts, to end at iteration 1002
    assert budget.progress(2) == 0.0 and budget.progress(502) == 0.5
    budget.set_steps(502, 752)  # the machine slowed down: the end comes sooner, from where the schedule is
    assert budget.progress(502) == 0.5 and budget.progress(627) == 0.75 and budget.progress(752) == 1.0
    budget.set_steps(627, 1627)  # faster again: the rest of the decay stretched over the steps that now fit
    assert budget.progress(627) == 0.75 and budget.progress(1127) == 0.875 and budget.progress(2000) == 1.0


def test_a_resumed_budget_goes_on_with_its_fit_and_its_time_left():
    saved = {"max_iters": 500, "seconds": 6.0, "step_seconds": 0.01, "max_seconds": 8}
    budget = TimeBudget(8, 50, "cpu", saved, iter_num=300)
    assert budget.steps == 500 and 1.9 < 8 - budget.spent() <= 2.0
    assert TimeBudget(8, 50, "cpu", {**saved, "max_iters": None}, 5).steps is None  # stopped before a fit
    assert 1290 < TimeBudget(16, 50, "cpu", saved, 300).steps <= 1300  # 10 s more: a longer schedule from here
    assert TimeBudget(0, 50, "cpu", saved, 300).steps is None  # resumed without max_seconds: max_iters holds
    for iter_num, spent in ((500, 7.5), (300, 8.2)):  # done: at its end, or out of time
        user_error(lambda: TimeBudget(8, 50, "cpu", {**saved, "seconds": spent}, iter_num),
                   "nothing left to train: the run trained for its max_seconds=8", "raise --max_seconds")
    assert TimeBudget(8, 50, "cpu").saved()["budget"]["seconds"] < 1 and TimeBudget(0, 50, "cpu").saved() == {}


# -----------------------------------------------------------------------------
# searches end to end

def tune(folder, *args, env=None):
    return run_script("tune.py", *args, cwd=folder, env=env)


@pytest.mark.slow
def test_a_tiny_search_writes_its_results_and_continues_when_run_again(folder):
    config = write_tune_config(folder)
    result = tune(folder, config, "--trials=3", "--dtype=float16")  # as on an older GPU
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
    """In bfloat16, as on a GPU: the settings given to tune.py reach its trials."""
    assert tune(folder, write_tune_config(folder), "--trials=1", "--dtype=bfloat16").returncode == 0
    alone = folder / "alone.py"  # the same settings as trial 0 (the config's own), as a train.py config
    alone.write_text(TINY_SEARCH.replace("search = {search}\n", ""))
    run_ok("train.py", alone, "--out_dir=out-alone", "--dtype=bfloat16", cwd=folder)
    assert "dtype bfloat16" in (folder / "out-tune" / "trial_0" / "train.log").read_text()
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
    # long enough that the steps between 40% and 70% of it, where it may be pruned, span several of tune.py's looks
    result = tune(folder, behind, "--trials=2", "--prune_after=1", "--max_iters=400", "--lr_decay_iters=400")
    assert result.returncode == 0, result.stderr
    assert read_trials(folder)[1]["state"] == "pruned"
    log = (folder / "out-tune" / "trial_1" / "train.log").read_text()
    assert "SIGTERM" in log and "step 160:" in log and "step 400:" not in log


@pytest.mark.slow
def test_a_study_keeps_its_search_space_and_its_study_dir(folder):
    assert tune(folder, write_tune_config(folder, search='{"n_layer": [1, 2]}'), "--trials=1",
                "--max_iters=1").returncode == 0
    other = write_tune_config(folder, search='{"n_layer": [1, 3]}', name="other.py")
    assert_clean_error(tune(folder, other, "--trials=2"), "search['n_layer'] differs from what the study's trial 0",
                       "start a new study in a new --study_dir")
    assert len(read_trials(folder)) == 1
    # another study in the same study_dir would write its trial 0, trials.csv, best.py over the first one's
    files = lambda study_dir: {p: p.read_bytes() for p in study_dir.rglob("*") if p.is_file()}
    first = files(folder / "out-tune")
    assert_clean_error(tune(folder, other, "--trials=1", "--max_iters=1", "--study_name=other"),
                       "out-tune holds the files of study 'smallgpt' in journal.log",
                       "give study 'other' a --study_dir of its own")
    assert files(folder / "out-tune") == first
    # in a folder of its own, each study keeps its trials, values and best checkpoint
    assert tune(folder, other, "--trials=1", "--max_iters=1", "--study_dir=out-other").returncode == 0
    assert files(folder / "out-tune") == first
    assert [row["n_layer"] for row in read_trials(folder)] == ["1"]
    assert (folder / "out-other" / "trial_0" / "ckpt.pt").exists()


@pytest.mark.slow
def test_a_trial_that_ends_by_itself_as_the_pruner_asks_is_complete(folder, monkeypatch):
    monkeypatch.chdir(folder)  # where the trial's train.py finds data/
    study = new_study(folder, prune_after=1)
    ahead = study.ask()
    for step in range(5, 101, 5):
        ahead.report(1.0, step)
    study.tell(ahead, 1.0)
    trial = study.ask()
    trial_dir = make_trial_dir(str(folder), trial.number)
    # a learning rate of 0: the val loss never improves, so patience ends the run at its evaluation at 50%, which
    # the pruner finds behind; the polls, 5 s apart, see it start, then see it evaluated twice and ended
    argv = [str(ROOT / "train.py"), *TINY, "--learning_rate=0", "--patience=1", "--eval_interval=5", "--max_iters=10",
            "--lr_decay_iters=10", f"--out_dir={trial_dir}"]
    state, value, _, error = run_trial(trial, [sys.executable], argv, trial_dir, 0, 10, poll_seconds=5)
    assert (state, error) == ("complete", None) and value > 1.0
    assert "early stop at iter 5" in (Path(trial_dir) / "train.log").read_text()


@pytest.mark.slow
def test_a_trial_left_running_by_a_worker_on_another_machine_stops_counting_once_it_is_silent(folder):
    (folder / "out-tune").mkdir()
    lost = running_trial(new_study(folder / "out-tune", name="smallgpt"), "another-machine:1", time.time() - 3600)
    result = tune(folder, write_tune_config(folder), "--trials=2")
    assert result.returncode == 0, result.stderr
    assert f"trial {lost}: no heartbeat from its worker another-machine:1 for 36" in result.stdout
    assert [row["state"] for row in read_trials(folder)] == ["fail", "complete", "complete"]


@pytest.mark.slow
def test_best_py_trains_what_the_best_trial_trained_after_the_search_grew(folder):
    assert tune(folder, write_tune_config(folder), "--trials=1", "--n_layer=2").returncode == 0  # 2 layers for all
    # the search grows: n_layer is searched now, and the new trials are hopeless, so trial 0 stays the best
    grown = write_tune_config(folder, search='{"learning_rate": (1e-7, 2e-7, "log"), "n_layer": [1, 3]}',
                              name="grown.py")
    assert tune(folder, grown, "--trials=2").returncode == 0
    assert min(read_trials(folder), key=lambda row: float(row["val_bpb"]))["number"] == "0"
    run_ok("train.py", folder / "out-tune" / "best.py", "--out_dir=out-best", cwd=folder)
    trained = lambda path: [(r["kind"], r["iter"], r.get("train_loss"), r.get("val_loss")) for r in read_metrics(path)]
    assert trained(folder / "out-best" / "metrics.jsonl") == trained(folder / "out-tune" / "trial_0" / "metrics.jsonl")


@pytest.mark.slow
@needs_gpt2_bpe
def test_a_finetuning_search_starts_every_trial_from_the_weights_it_names(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    pretrained = tmp_path / "pretrained"  # a GPT-2 of its own shape: 2 layers of 32, where the config says 1 of 16
    transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=32)
                                 ).save_pretrained(pretrained)
    (tmp_path / "text.txt").write_text(sample_text(20_000), encoding="utf-8")
    prepare_in(tmp_path, "--input=text.txt", "--tokenizer=gpt2", "--dataset=shakespeare")
    flags = [f"--init_from={pretrained}", "--dataset=shakespeare", "--max_iters=2", "--lr_decay_iters=2",
             "--eval_interval=2"]
    result = tune(tmp_path, write_tune_config(tmp_path), "--trials=1", *flags)
    assert result.returncode == 0, result.stderr
    alone = tmp_path / "alone.py"
    alone.write_text(TINY_SEARCH.replace("search = {search}\n", ""))
    evaluated = run_ok("train.py", alone, *flags, "--eval_only=True", "--out_dir=out-alone", cwd=tmp_path)
    log = (tmp_path / "out-tune" / "trial_0" / "train.log").read_text()
    line = lambda text, start: next(line for line in text.splitlines() if line.startswith(start))
    assert f"initializing from {pretrained}: n_layer=2" in log
    assert line(log, "number of parameters") == line(evaluated, "number of parameters")
    assert line(log, "step 0:") == line(evaluated, "step 0:")  # the folder's loss, not a new model's
    assert f"init_from = '{pretrained}'" in (tmp_path / "out-tune" / "best.py").read_text()


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
    metrics = folder / "out-tune" / "trial_0" / "metrics.jsonl"
    wait_for(lambda: metrics.exists() and any(json.loads(line)["elapsed"] > 1 for line in metrics.read_text().split(
        "\n")[:-1]))  # a trial a second into its training
    worker.send_signal(signal.SIGINT)
    out, err = worker.communicate(timeout=120)
    assert worker.returncode == 0 and "stopped: run the same command to continue" in out and not err, err
    rows = read_trials(folder)
    assert rows[0]["state"] == "fail" and rows[0]["error"] == "stopped by Ctrl-C" and int(rows[0]["seconds"]) >= 1
    log = (folder / "out-tune" / "trial_0" / "train.log").read_text()
    assert "interrupted at iter" in log and log.endswith("the same tune.py command runs this trial again\n")
    again = tune(folder, config, "--trials=1")
    assert again.returncode == 0 and "trial 1 complete" in again.stdout
    assert same_settings(read_trials(folder), 1, 0)  # trial 0's, the config's own, run again


def same_settings(rows, a, b):
    """Whether trials a and b of trials.csv's rows drew the same settings."""
    space = [key for key in rows[0] if key not in ("number", "state", "val_bpb", "seconds", "error")]
    return space and [rows[a][key] for key in space] == [rows[b][key] for key in space]


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
    assert same_settings(read_trials(folder), 1, 0)  # failed as its worker was gone, and run again


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
    message = script_error("tune.py", config, *args, cwd=tmp_path)
    assert all(fragment in message for fragment in fragments), message
    assert (tmp_path / "afile").read_text() == "keep" and "secret" not in message


def test_a_missing_database_driver_is_named(tmp_path):
    if importlib.util.find_spec("psycopg2"):
        pytest.skip("psycopg2 is installed")
    config = write_tune_config(tmp_path)
    message = script_error("tune.py", config, f"--storage=postgresql+psycopg2://u@127.0.0.1:{free_port()}/db",
                           cwd=tmp_path)
    assert "needs the database driver psycopg2" in message and "pip install 'psycopg[binary]'" in message


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
def test_a_budget_of_less_than_a_few_steps_stops_after_a_few_steps(folder):
    run_ok("train.py", *TINY, "--max_seconds=0.001", "--max_iters=100000", "--eval_interval=50", cwd=folder)
    records = [json.loads(line) for line in (folder / "out" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["kind"] == "eval" and records[-1]["iter"] <= 3  # the first fit comes after the second step


@pytest.mark.slow
def test_a_finetune_that_never_beats_its_start_saves_its_start(folder):
    """A learning rate of 0 leaves every evaluation equal to the start's: the start is the best model of the run,
    saved, whether patience stops the run or always_save_checkpoint=False writes over an older run's ckpt.pt."""
    run_ok("train.py", *TINY, "--max_iters=10", "--eval_interval=10", "--out_dir=base", cwd=folder)
    finetune = [*TINY, "--init_from=base/ckpt.pt", "--learning_rate=0", "--eval_interval=2", "--max_iters=10"]
    stopped = run_ok("train.py", *finetune, "--patience=2", "--out_dir=stopped", cwd=folder)
    assert "early stop at iter 4" in stopped and "at iter 0" in stopped.split("early stop")[1]
    assert torch.load(folder / "stopped" / "ckpt.pt", weights_only=True)["iter_num"] == 0
    run_ok("sample.py", "--out_dir=stopped", "--num_samples=1", "--max_new_tokens=20", "--device=cpu", cwd=folder)
    resumed = run_ok("train.py", *finetune, "--patience=4", "--out_dir=stopped", "--init_from=resume", cwd=folder)
    assert "resuming from stopped/ckpt.pt at iter 0" in resumed
    shutil.copytree(folder / "base", folder / "older")  # an older run's ckpt.pt where this one writes
    run_ok("train.py", *finetune, "--always_save_checkpoint=False", "--out_dir=older", cwd=folder)
    saved = torch.load(folder / "older" / "ckpt.pt", weights_only=True)
    assert saved["pretrained"] == "base/ckpt.pt" and saved["iter_num"] == 0  # this run's start, not the older run


@pytest.mark.slow
def test_max_seconds_fits_the_schedule_to_the_time(folder):
    stdout = run_ok("train.py", *TINY, "--max_seconds=8", "--max_iters=100000", "--eval_interval=50", cwd=folder)
    fits = [int(line.split(": ")[1].split()[0]) for line in stdout.splitlines() if line.startswith("max_seconds=8:")]
    records = [json.loads(line) for line in (folder / "out" / "metrics.jsonl").read_text().splitlines()]
    steps = records[-1]["iter"]  # fitted after steps 1, 2, 4 and every ten, printed first and after every evaluation
    assert len(fits) >= 2 and 20 < steps < 100000 and f"step {steps}:" in stdout  # evaluated at the end, and done
    assert records[-1]["kind"] == "eval" and 0.75 < fits[-1] / steps < 1.25
    assert torch.load(folder / "out" / "ckpt.pt", weights_only=True)["budget"]["max_iters"] == steps
    # spent most of the time asked (how far a slow machine's last steps and evaluation go past it is for a benchmark)
    assert 8 * 0.5 < records[-1]["elapsed"]
    lrs = [r["lr"] for r in records if r["kind"] == "iter"]
    assert lrs[-1] < 2e-4  # the cosine reached min_lr at the horizon, not at max_iters


@pytest.mark.slow
def test_a_max_seconds_run_stopped_and_resumed_keeps_its_schedule_and_its_time(folder):
    args = [*TINY, "--max_seconds=8", "--max_iters=100000", "--eval_interval=50", "--log_interval=1"]
    process = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=folder, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    started = None
    for line in process.stdout:  # stopped after 4 of its 8 seconds
        started = started or (line.startswith("step 0:") and time.time())
        if started and time.time() - started > 4:
            break
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=120)
    checkpoint = torch.load(folder / "out" / "ckpt.pt", weights_only=True)
    stopped_at, budget = checkpoint["iter_num"], checkpoint["budget"]
    assert stopped_at < budget["max_iters"] and 3 < budget["seconds"] < 8
    run_ok("train.py", *args, "--init_from=resume", cwd=folder)
    # the learning rate falls smoothly through every fit to the time and through the resume: a busy machine's pace
    # moves the schedule's end, never the rate from one step to the next
    steps = [r for r in read_metrics(folder / "out" / "metrics.jsonl") if r["kind"] == "iter"]
    lrs = [r["lr"] for r in steps]
    assert [r["iter"] for r in steps] == list(range(len(steps)))  # each step once, the stopped run's and the resumed
    steps_of_warmup = 6
    assert max(abs(b - a) for a, b in zip(lrs[steps_of_warmup:], lrs[steps_of_warmup + 1:])) < 0.02 * max(lrs)
    records = read_metrics(folder / "out" / "metrics.jsonl")  # whose clock goes on from the stopped run's
    assert records[-1]["kind"] == "eval" and 8 * 0.6 < records[-1]["elapsed"]  # its time spent, not asserted past
    assert_clean_error(run_script("train.py", *args, "--init_from=resume", cwd=folder),
                       "nothing left to train: the run trained for its max_seconds=8", "raise --max_seconds")


def test_trials_are_compared_at_equal_shares_of_their_time_or_steps():

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
    first, before = progress_reports({"iter": 100, "elapsed": 30.0, "val_bpb": 2.9}, None, -1, 100, 1000)
    assert [value for _, value in first] == [math.inf] * 6 and before == (0.3, 2.9)  # nothing known before it
    # evaluations at 30% (2.9) and 52% (2.5): at 45%, 2.9 - 0.4 * 15 / 22
    reports, now = progress_reports({"iter": 400, "elapsed": 52.0, "val_bpb": 2.5}, before, 30, 100, 1000)
    assert [step for step, _ in reports] == [35, 40, 45, 50] and now == (0.52, 2.5)
    assert reports[2][1] == pytest.approx(2.9 - 0.4 * 15 / 22)
    # a worse evaluation does not undo the best: the line stays flat
    reports, now = progress_reports({"iter": 900, "elapsed": 101.0, "val_bpb": 3.1}, (0.9, 2.5), 90, 100, 1000)
    assert reports == [(95, 2.5), (100, 2.5)] and now == (1.01, 2.5)
