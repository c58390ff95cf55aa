"""
A trial of tune.py's search: train.py run with the trial's settings, watched as it runs.

- preload(script), start_trial(launcher, argv, log_path): a trial's process, forked from tune.py once it has
  imported what train.py imports, so that a trial does not spend seconds importing torch; run_as_main(argv): the
  script run in such a fork.
- run_trial(trial, launcher, argv, trial_dir, max_seconds, max_iters): train.py with the trial's settings; its
  evaluations reported to Optuna as they are logged (by the share of the trial's time or steps done), a heartbeat
  recorded, and the process stopped (SIGTERM) if Optuna prunes it.
- progress_reports(record, ...): what an evaluation reports to the pruner; new_records(path, seen): the records
  a metrics.jsonl has gained.
"""

import ast
import ctypes
import importlib
import json
import math
import os
import runpy
import signal
import sys
import time

from smallgpt.files import read_text
from smallgpt.metrics import pyplot

# a trial is pruned only between these shares (in %) of its time or steps: the early losses favour settings that
# learn fast and then stall, and are noisy; late in a trial, stopping it saves little and loses its result
PRUNE_FROM, PRUNE_UNTIL = 40, 70
# a worker records a heartbeat with its running trial this often (tune_study.py's STALE_SECONDS: when it is dead)
HEARTBEAT_SECONDS = 10
# a trial is train.py run in a fork of tune.py, which has imported what it needs; elsewhere than on Linux, forking
# a process that has loaded system frameworks is not safe, so the fork starts a new Python
FORK_TRIALS = sys.platform.startswith("linux")


def preload(script):
    """
    Import the modules that script imports at its top, and the pyplot that metrics.py draws with: trials forked
    from tune.py (start_trial) then start without importing them again, which takes seconds (torch's alone).
    """
    imports = [node for node in ast.parse(read_text(script, "the script")).body
               if isinstance(node, (ast.Import, ast.ImportFrom))]
    for node in imports:
        for name in [node.module] if isinstance(node, ast.ImportFrom) else [alias.name for alias in node.names]:
            importlib.import_module(name)
    pyplot()


def start_trial(launcher, argv, log_path):
    """
    Start `python argv...` as a fork of tune.py (see FORK_TRIALS), its output in log_path; returns its pid. With a
    launcher (torchrun), the fork runs `launcher argv...` instead. The child has its own session (a Ctrl-C at the
    terminal goes to tune.py alone, which passes it on) and on Linux gets a SIGTERM when tune.py dies, even by
    kill -9, so that train.py saves and exits instead of running on.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child never returns into tune.py, nor runs its exit handlers (its database connection's)
        code = 1
        try:
            code = run_child(launcher, argv, log_path)
        finally:
            os._exit(code)
    return pid


def run_child(launcher, argv, log_path):
    """In start_trial's fork: run the script as Python would run it; its exit status."""
    os.setsid()
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    if launcher or not FORK_TRIALS:
        os.environ["PYTHONUNBUFFERED"] = "1"
        launcher = launcher or [sys.executable]
        os.execv(launcher[0], [*launcher, *argv])
    return run_as_main(argv)


def run_as_main(argv):
    """Run the script argv[0] with argv as Python runs a file, its output on file descriptors 1 and 2; its exit
    status. For a forked process (start_trial's, and the tests'), which never returns to its parent's code."""
    sys.stdout, sys.stderr = (open(fd, "w", buffering=1, closefd=False) for fd in (1, 2))
    sys.argv = list(argv)
    try:
        runpy.run_path(argv[0], run_name="__main__")
        return 0
    except SystemExit as e:  # as Python exits on it
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    except BaseException:
        sys.excepthook(*sys.exc_info())  # the script's own: configure's prints a UserError as one line
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def exit_status(pid):
    """A child's exit status as subprocess gives it (-N: killed by signal N), or None while it runs."""
    done, status = os.waitpid(pid, os.WNOHANG)
    return os.waitstatus_to_exitcode(status) if done else None


def new_records(path, seen=(None, 0)):
    """
    (records, seen): the records on the whole lines of a metrics.jsonl past seen, the file (its inode) and the
    offset read up to before; all the file's records if it is another file now, or shorter (replaced or cut).
    """
    try:
        with open(path, "rb") as f:
            stat = os.fstat(f.fileno())
            offset = seen[1] if seen[0] == stat.st_ino and seen[1] <= stat.st_size else 0
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], seen
    whole = data[:data.rfind(b"\n") + 1]
    records = []
    for line in whole.splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # not a record of train.py's
            continue
    return records, (stat.st_ino, offset + len(whole))


def run_trial(trial, launcher, argv, trial_dir, max_seconds, max_iters, poll_seconds=0.2):
    """
    Run argv (train.py and the trial's flags; start_trial says how) with its log in trial_dir/train.log; report
    the best val bits per byte so far to the trial at each evaluation, record a heartbeat every HEARTBEAT_SECONDS,
    and stop the process (SIGTERM: it saves and exits) when Optuna prunes the trial. Returns (state, best val bpb
    or None, seconds, error line or None); state is 'complete', 'pruned' or 'failed'. A trial that ends by itself
    is never pruned, even if the pruner asked as it ended. KeyboardInterrupt stops the process too, then propagates.
    """
    import optuna
    metrics_path = os.path.join(trial_dir, "metrics.jsonl")
    log_path = os.path.join(trial_dir, "train.log")
    before, seen, last_percent = None, (None, 0), -1  # before: the last evaluation's share and best val bpb
    returncode, pruned, start = None, False, time.time()
    beat = start
    pid = start_trial(launcher, argv, log_path)
    try:
        while True:
            exited = returncode is not None  # then every record it wrote is in the file
            records, seen = new_records(metrics_path, seen)
            prune = False
            for record in records:
                if record.get("kind") == "eval" and "val_bpb" in record and not pruned:
                    reports, before = progress_reports(record, before, last_percent, max_seconds, max_iters)
                    for percent, value in reports:
                        if math.isfinite(value):
                            trial.report(value, percent)
                        last_percent = percent
                    prune = prune or PRUNE_FROM <= last_percent <= PRUNE_UNTIL and trial.should_prune()
            if exited:
                break
            if time.time() - beat > HEARTBEAT_SECONDS:
                beat = time.time()
                trial.set_user_attr("heartbeat", beat)
            returncode = exit_status(pid)  # reaps it if it ended: a reaped pid is never signalled, it may be reused
            if prune and returncode is None:
                pruned = True
                os.kill(pid, signal.SIGTERM)
            if returncode is None:
                time.sleep(poll_seconds)
    except BaseException as e:  # Ctrl-C, or the trial failed by another worker: its process stops too
        if returncode is None:
            os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)
        if not isinstance(e, optuna.exceptions.UpdateFinishedTrialError):
            raise
        return "failed", None, time.time() - start, "another worker marked it failed: it heard no heartbeat"
    seconds = time.time() - start
    best = before[1] if before else math.inf
    if pruned and stopped_by_signal(log_path):
        return "pruned", best, seconds, None
    if pruned and returncode == -signal.SIGTERM:  # the SIGTERM came as it was ending by itself: it ended
        returncode = 0
    if returncode != 0:
        return "failed", None, seconds, error_line(log_path, returncode)
    if not math.isfinite(best):
        return "failed", None, seconds, "train.py logged no evaluation (is max_iters 0?)"
    return "complete", best, seconds, None


def progress_reports(record, before, last_percent, max_seconds, max_iters):
    """
    The (percent, val bpb) pairs that an evaluation's record reports to Optuna, whose pruner compares trials at equal
    "steps", here the percents of a trial: the multiples of 5% of the trial passed since last_percent, in time for
    trials of max_seconds each (so that a small fast model and a big slow one are compared at equal times), else in
    iterations. Trials evaluate at different shares of their time, so the value at a percent is read off the line
    from the evaluation before (before: its share and the best val bpb then) to this one's best; before the first,
    it is unknown (inf). Returns the pairs and (this evaluation's share, the best val bpb now).
    """
    done = record["elapsed"] / max_seconds if max_seconds else record["iter"] / max(max_iters, 1)
    percents = range(last_percent + 5 if last_percent >= 0 else 5, min(int(20 * done) * 5, 100) + 1, 5)
    if before is None:
        return [(percent, math.inf) for percent in percents], (done, record["val_bpb"])
    (share, best), now = before, min(before[1], record["val_bpb"])
    on_the_line = lambda percent: best + (now - best) * (percent / 100 - share) / (done - share)
    return [(percent, on_the_line(percent)) for percent in percents], (done, now)


def stopped_by_signal(log_path):
    """Whether train.py's log says that it stopped before its end, on a signal."""
    with open(log_path, errors="replace") as f:
        return any(line.startswith("interrupted at iter ") for line in f)


def error_line(log_path, returncode):
    """train.py's one-line error from its log, or the log's last line."""
    with open(log_path, errors="replace") as f:
        lines = [line.strip() for line in f if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    if errors:
        return errors[-1][len("error: "):]
    return f"exit status {returncode}: {lines[-1] if lines else 'no output'}"
