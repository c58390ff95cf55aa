"""
The parts of tune.py's search that are not Optuna's: the search space, a trial as a train.py process, and the
results written out. Optuna is imported only inside the functions that use it.

- script_defaults(path): a script's settings, read from its source without running it (train.py's for tune.py).
- search_space(search, defaults): the search in a tune config checked against train.py's settings.
- check_trial_settings(config, space): refuses what a trial cannot train with (init_from='resume', eval_only).
- check_study_space(study, space): the search space must be the one the study's trials were drawn from.
- starting_point(config, space): the config's own values of the searched settings, a new study's first trial.
- suggest(trial, space): one value of each setting, drawn by the trial's sampler.
- preload(script), start_trial(launcher, argv, log_path): a trial's process, forked from tune.py once it has
  imported what train.py imports, so that a trial does not spend seconds importing torch.
- run_trial(trial, launcher, argv, trial_dir, max_seconds, max_iters): train.py with the trial's settings; its
  evaluations reported to Optuna as they are logged (by the share of the trial's time or steps done), a heartbeat
  recorded, and the process stopped (SIGTERM) if Optuna prunes it.
- open_study(storage, name, study_dir, seed, prune_after): the study, in study_dir's journal file or a database,
  with a TPE sampler seeded for each trial by its number.
- claim_study_dir, make_trial_dir: a study_dir holds one study's files, and a trial's folder is new.
- trials_taken, record_trial, fail_stale_trials, drop_checkpoints_but_the_best: the study's bookkeeping.
- write_results(study, study_dir, fixed, space), print_summary: trials.csv, best.py, history.png and
  importance.png; the table of trials and the best settings.
"""

import ast
import csv
import ctypes
import difflib
import importlib
import json
import math
import os
import runpy
import signal
import socket
import sys
import time
from contextlib import contextmanager

from smallgpt.configurator import check_range, convert
from smallgpt.errors import UserError
from smallgpt.files import read_text, replaced_atomically

# a trial is pruned only between these shares (in %) of its time or steps: the early losses favour settings that
# learn fast and then stall, and are noisy; late in a trial, stopping it saves little and loses its result
PRUNE_FROM, PRUNE_UNTIL = 40, 70
PER_TRIAL = ("out_dir",)  # the one setting that tune.py sets for each trial itself: trial_N's folder
# a worker records a heartbeat with its running trial this often; a running trial whose last heartbeat is older than
# STALE_SECONDS (by the clock of the machine that looks: keep the machines' clocks in time) lost its worker
HEARTBEAT_SECONDS, STALE_SECONDS = 10, 120
# a trial is train.py run in a fork of tune.py, which has imported what it needs; elsewhere than on Linux, forking
# a process that has loaded system frameworks is not safe, so the fork starts a new Python
FORK_TRIALS = sys.platform.startswith("linux")


def script_defaults(path):
    """{name: value} of the module-level settings at the top of a script: lower-case names bound to literals."""
    defaults = {}
    for node in ast.parse(read_text(path, "script")).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                continue
            if name.islower() and not name.startswith("_") and name not in defaults:
                defaults[name] = value
    return defaults


def search_space(search, defaults):
    """
    {setting: ("int" | "float", low, high, log) or ("choice", [values])} of a tune config's search: a uniform range
    (low, high), of ints or floats as the bounds are; a log range (low, high, "log"); a list of choices.
    """
    if not isinstance(search, dict) or not search:
        raise UserError("search must map train.py settings to ranges, e.g. search = {\"learning_rate\": "
                        "(1e-4, 1e-2, \"log\"), \"n_layer\": [2, 3, 4]}")
    space = {}
    for key, spec in search.items():
        if key not in defaults or key in PER_TRIAL:
            close = difflib.get_close_matches(str(key), [k for k in defaults if k not in PER_TRIAL], n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            what = "is set by tune.py for each trial" if key in PER_TRIAL else "is not a train.py setting"
            raise UserError(f"search: '{key}' {what}{hint}")
        space[key] = parse_range(key, spec, defaults[key])
    return space


def check_trial_settings(config, space):
    """UserError for the settings that a trial cannot train with: every trial trains anew in a folder of its own."""
    starts = space["init_from"][1] if "init_from" in space else [config["init_from"]]
    if "resume" in starts:
        raise UserError("init_from='resume' cannot start a trial, which trains anew in a folder of its own: start "
                        "from 'scratch', a GPT-2 model or a folder (a finetuning search), or train on with train.py")
    if config["eval_only"] or "eval_only" in space:
        raise UserError("eval_only=True trains nothing, and a trial is scored by what it learns: leave it out")


def parse_range(key, spec, default):
    where = f"search['{key}']"
    if isinstance(spec, list):
        if not spec:
            raise UserError(f"{where} is an empty list of choices: give at least one value")
        choices = [convert(key, value, default, where) for value in spec]
        for value in choices:
            check_range(key, value)
        return ("choice", choices)
    is_log = isinstance(spec, tuple) and len(spec) == 3 and spec[2] == "log"
    if not (isinstance(spec, tuple) and (len(spec) == 2 or is_log)):
        raise UserError(f"{where} must be (low, high), (low, high, \"log\") or a list of choices, got {spec!r}")
    low, high = spec[:2]
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high, default))
    if not numbers or isinstance(default, bool):
        raise UserError(f"{where}: a range needs a number setting and number bounds; give a list of choices instead")
    kind = "int" if isinstance(low, int) and isinstance(high, int) and isinstance(default, int) else "float"
    if isinstance(default, int) and kind == "float":
        raise UserError(f"{where}: {key} is a whole number, so its bounds must be too, got {spec!r}")
    if not low < high:
        raise UserError(f"{where} is an empty or reversed range: low ({low}) must be below high ({high})")
    if is_log and low <= 0:
        raise UserError(f"{where}: a log range must lie above 0, got low {low}")
    check_range(key, low)
    check_range(key, high)
    return (kind, low, high, is_log)


def check_study_space(study, space):
    """UserError if the study's earlier trials drew a setting of the space otherwise (as a range where it is now a
    list of choices, on a log scale where it is not, or from other choices): Optuna cannot mix them in one study."""
    import optuna
    new = {key: optuna.distributions.CategoricalDistribution(spec[1]) if spec[0] == "choice" else
           (optuna.distributions.IntDistribution if spec[0] == "int" else optuna.distributions.FloatDistribution)(
               spec[1], spec[2], log=spec[3]) for key, spec in space.items()}
    for trial in study.get_trials(deepcopy=False):
        for key, distribution in trial.distributions.items():
            try:
                if key in new:
                    optuna.distributions.check_distribution_compatibility(distribution, new[key])
            except ValueError:
                raise UserError(f"search['{key}'] differs from what the study's trial {trial.number} drew from "
                                f"({distribution}): keep a study's search space, or start a new study in a new "
                                f"--study_dir (in a shared database, with a new --study_name too)") from None


def starting_point(config, space):
    """The config's value of each setting of the space that lies in it: where a new study starts."""
    inside = lambda value, spec: value in spec[1] if spec[0] == "choice" else (
        isinstance(value, (int, float)) and not isinstance(value, bool) and spec[1] <= value <= spec[2])
    return {key: config[key] for key, spec in space.items() if inside(config[key], spec)}


def suggest(trial, space):
    """{setting: value} drawn by the trial for each setting of the space."""
    values = {}
    for key, spec in space.items():
        if spec[0] == "choice":
            values[key] = trial.suggest_categorical(key, spec[1])
        elif spec[0] == "int":
            values[key] = trial.suggest_int(key, spec[1], spec[2], log=spec[3])
        else:
            values[key] = trial.suggest_float(key, spec[1], spec[2], log=spec[3])
    return values


def flags_of(settings):
    """--key=value flags that configure reads back as the same values."""
    return [f"--{key}={value if isinstance(value, str) else repr(value)}" for key, value in settings.items()]


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
    import matplotlib
    matplotlib.use("Agg")
    importlib.import_module("matplotlib.pyplot")


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
    before, seen, last_step = None, (None, 0), -1  # before: the last evaluation's share and best val bpb
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
                    reports, before = progress_reports(record, before, last_step, max_seconds, max_iters)
                    for step, value in reports:
                        if math.isfinite(value):
                            trial.report(value, step)
                        last_step = step
                    prune = prune or PRUNE_FROM <= last_step <= PRUNE_UNTIL and trial.should_prune()
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


def progress_reports(record, before, last_step, max_seconds, max_iters):
    """
    The (step, val bpb) pairs that an evaluation's record reports to Optuna, whose pruner compares trials at equal
    steps: the multiples of 5% of the trial passed since last_step, in time for trials of max_seconds each (so that a
    small fast model and a big slow one are compared at equal times), else in iterations. Trials evaluate at
    different shares of their time, so the value at a step is read off the line from the evaluation before (before:
    its share and the best val bpb then) to this one's best; before the first, it is unknown (inf). Returns the
    pairs and (this evaluation's share, the best val bpb now).
    """
    done = record["elapsed"] / max_seconds if max_seconds else record["iter"] / max(max_iters, 1)
    steps = range(last_step + 5 if last_step >= 0 else 5, min(int(20 * done) * 5, 100) + 1, 5)
    if before is None:
        return [(step, math.inf) for step in steps], (done, record["val_bpb"])
    (share, best), now = before, min(before[1], record["val_bpb"])
    return [(step, best + (now - best) * (step / 100 - share) / (done - share)) for step in steps], (done, now)


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


def open_study(storage, name, study_dir, seed, prune_after=5):
    """
    The Optuna study `name` (created if new): in study_dir/journal.log, which the workers of one machine share
    through file locks, or in the database at the storage URL (postgresql+psycopg://user:password@host/db).
    """
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # tune.py prints its own line per trial
    if storage:
        try:
            backend = database_storage(storage)
        except ImportError as e:  # Optuna's, raised from the driver's ModuleNotFoundError
            driver = getattr(e.__cause__, "name", None) or e.name
            raise UserError(f"storage {hide_password(storage)} needs the database driver {driver}, which is not "
                            f"installed: install it (for PostgreSQL: pip install 'psycopg[binary]' and a "
                            f"postgresql+psycopg:// URL)") from None
        except Exception as e:  # sqlalchemy's errors: a malformed URL, a server that cannot be reached
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"cannot open storage {hide_password(storage)}: {reason}") from None
    else:
        from optuna.storages.journal import JournalFileBackend, JournalStorage
        backend = JournalStorage(JournalFileBackend(os.path.join(study_dir, "journal.log")))
    return optuna.create_study(study_name=name, storage=backend, direction="minimize", load_if_exists=True,
                               pruner=optuna.pruners.MedianPruner(n_startup_trials=prune_after),
                               sampler=trial_seeded_sampler(seed))


def trial_seeded_sampler(seed):
    """
    Optuna's TPE sampler, seeded anew for each trial with seed + the trial's number: a search can be repeated, and
    two workers never draw alike (a seed counted from the trials when a worker opens the study is the same for
    workers that open it at once). Multivariate: the settings are drawn together, as they interact (a learning
    rate fits a batch size and a depth); constant liar: running trials count as bad, so that workers spread out.
    """
    import optuna
    tpe = lambda number: optuna.samplers.TPESampler(seed=seed + number, constant_liar=True, multivariate=True)

    class TrialSeeded(optuna.samplers.BaseSampler):
        sampler = tpe(0)

        def before_trial(self, study, trial):
            self.sampler = tpe(trial.number)
            self.sampler.before_trial(study, trial)

        def infer_relative_search_space(self, study, trial):
            return self.sampler.infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self.sampler.sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self.sampler.sample_independent(study, trial, param_name, param_distribution)

        def after_trial(self, study, trial, state, values):
            self.sampler.after_trial(study, trial, state, values)

    return TrialSeeded()


def database_storage(url, attempts=3):
    """Optuna's storage in the database at url. Workers that start together on a new database race to create its
    tables, and all but one fail on a duplicate: they try again, and find the tables made."""
    import optuna
    import sqlalchemy
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url)
        except sqlalchemy.exc.IntegrityError:
            if attempt == attempts - 1:
                raise
            time.sleep(1.0)


def hide_password(url):
    """url with its password, if any, as ***."""
    head, at, tail = url.rpartition("@")
    if not at or "://" not in head:
        return url
    scheme, _, credentials = head.partition("://")
    user, colon, _ = credentials.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{tail}"


def claim_study_dir(study_dir, storage, name):
    """
    A study_dir holds the files of one study (trial_N/, trials.csv, best.py, the plots): record which in
    study_dir/study.json, or raise UserError if it is another study's, whose files the new one would overwrite.
    """
    path = os.path.join(study_dir, "study.json")
    mine = {"study_name": name, "storage": hide_password(storage) if storage else "journal.log"}
    if os.path.exists(path):
        try:
            theirs = json.loads(read_text(path, "the study's record"))
            theirs = {key: theirs[key] for key in mine}
        except (ValueError, TypeError, KeyError):
            raise UserError(f"{path} is not the record that tune.py writes: remove it, or use another "
                            f"--study_dir") from None
        if theirs != mine:
            raise UserError(f"{study_dir} holds the files of study '{theirs['study_name']}' in {theirs['storage']}: "
                            f"give study '{name}' a --study_dir of its own")
        return
    tmp = f"{path}.{os.getpid()}.tmp"  # workers that start together each write their own, then one wins
    try:
        with open(tmp, "w") as f:
            json.dump(mine, f)
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror}") from None


def make_trial_dir(study_dir, number):
    """study_dir/trial_N, new: a study's trial numbers are its own, so a folder already there is another study's."""
    path = os.path.join(study_dir, f"trial_{number}")
    try:
        os.mkdir(path)
    except FileExistsError:
        raise UserError(f"{path} is there already, from another study (one that wrote no study.json there): "
                        f"give this study a --study_dir of its own") from None
    except OSError as e:
        raise UserError(f"cannot create the trial's folder {path}: {e.strerror}") from None
    return path


@contextmanager
def deferred_ctrl_c():
    """A block that a Ctrl-C does not cut short: it takes effect (KeyboardInterrupt) once the block is done."""
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def trials_taken(study, before=None):
    """The study's trials that are finished (complete or pruned) or running; of those numbered below `before`."""
    import optuna
    taken = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING)
    return sum(t.state in taken and (before is None or t.number < before) for t in study.get_trials(deepcopy=False))


def record_trial(study, trial, state, value, seconds, error):
    """Tell the study how the trial ended, and print a line on it and on the best so far."""
    import optuna
    states = {"complete": optuna.trial.TrialState.COMPLETE, "pruned": optuna.trial.TrialState.PRUNED,
              "failed": optuna.trial.TrialState.FAIL}
    try:
        trial.set_user_attr("seconds", seconds)
        if error:
            trial.set_user_attr("error", error)
        study.tell(trial, value if state == "complete" else None, state=states[state])
    except optuna.exceptions.UpdateFinishedTrialError:  # another worker failed it, as it heard no heartbeat
        state, value, error = "failed", None, "another worker marked it failed: it heard no heartbeat"
    outcome = f"val bpb {value:.4f}" if value is not None else error
    print(f"trial {trial.number} {state}: {outcome}, {seconds:.0f}s | {trials_taken(study)} taken, "
          f"{best_line(study)}", flush=True)


def best_line(study):
    best = best_complete(study)
    if best is None:
        return "none complete yet"
    return f"best {best.value:.4f} (trial {best.number}: {settings_text(best.params)})"


def best_complete(study, trials=None):
    """The complete trial of the lowest val bpb (of trials, if given: one reading of the study), or None."""
    import optuna
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    return min(complete, key=lambda t: t.value) if complete else None


def settings_text(params):
    return ", ".join(f"{key}={format_value(value)}" for key, value in params.items())


def this_worker():
    return f"{socket.gethostname()}:{os.getpid()}"


def fail_stale_trials(study):
    """
    Mark failed the running trials whose worker is gone: on this machine, a worker whose process has ended, or
    whose pid is now this worker's own (a restarted container's); anywhere, one whose heartbeat stopped more than
    STALE_SECONDS ago (a worker killed on another machine, a machine that died). Called by a worker that runs no
    trial, so that the trials of the gone stop counting towards the study's total.
    """
    import optuna
    host, pid = this_worker().split(":")
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker", "")
        their_host, _, their_pid = worker.rpartition(":")
        silent = time.time() - t.user_attrs.get("heartbeat", t.datetime_start.timestamp())
        if their_host == host and their_pid.isdigit() and (their_pid == pid or not process_alive(int(their_pid))):
            why = f"its worker (process {their_pid}) is gone"
        elif silent > STALE_SECONDS:
            why = f"no heartbeat from its worker {worker or '(unknown)'} for {silent:.0f}s"
        else:
            continue
        try:
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:  # it has just ended, or another worker failed it
            continue
        print(f"trial {t.number}: {why}; marked failed")


def process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def drop_checkpoints_but_the_best(study, study_dir):
    """Delete the ckpt.pt of every finished trial but the best complete one, so that a search does not fill the
    disk; running trials keep theirs. One reading of the study decides both: read twice, a trial of another worker
    that completed between the readings would lose its checkpoint, being neither the best nor running."""
    import optuna
    trials = study.get_trials(deepcopy=False)
    best = best_complete(study, trials)
    for t in trials:
        path = os.path.join(study_dir, f"trial_{t.number}", "ckpt.pt")
        kept = best is not None and t.number == best.number or t.state == optuna.trial.TrialState.RUNNING
        if not kept and os.path.exists(path):
            os.remove(path)


def best_config(fixed, params):
    """best.py: the fixed settings, then the best ones found, as a config file."""
    lines = ["# found by tune.py: the settings every trial had, then the best trial's\n"]
    lines += [f"{key} = {value!r}\n" for key, value in fixed.items()]
    lines += ["\n"] + [f"{key} = {value!r}\n" for key, value in params.items()]
    return "".join(lines)


def write_results(study, study_dir, fixed, space):
    """
    trials.csv, best.py (if a trial completed), history.png and importance.png in study_dir. best.py holds the best
    trial's own settings, as recorded with it: those of this run (fixed) only for a trial from before they were.
    """
    import optuna
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    with replaced_atomically(os.path.join(study_dir, "trials.csv"), what="trials table") as [tmp], \
            open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["number", "state", "val_bpb", "seconds", *space, "error"])
        for t in trials:
            writer.writerow(table_row(t, space) + [t.user_attrs.get("error", "")])
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        return
    best = best_complete(study)
    with replaced_atomically(os.path.join(study_dir, "best.py"), what="best settings") as [tmp], \
            open(tmp, "w") as f:
        f.write(best_config(best.user_attrs.get("fixed", fixed), best.params))
    plot_history(complete, os.path.join(study_dir, "history.png"))
    plot_importance(study, os.path.join(study_dir, "importance.png"))


def table_row(trial, space):
    """number, state, val bpb, seconds and each setting of a trial, as text."""
    value = "" if trial.value is None else f"{trial.value:.4f}"
    seconds = trial.user_attrs.get("seconds", "")
    return [trial.number, trial.state.name.lower(), value, f"{seconds:.0f}" if seconds != "" else "",
            *(format_value(trial.params.get(key, "")) for key in space)]


def format_value(value):
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def plot_history(complete, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    numbers = [t.number for t in complete]
    values = [t.value for t in complete]
    best_so_far = [min(values[:i + 1]) for i in range(len(values))]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.scatter(numbers, values, s=14, label="trial")
    ax.step(numbers, best_so_far, where="post", color="C1", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("best val bits per byte")
    ax.legend()
    fig.tight_layout()
    with replaced_atomically(path, what="plot") as [tmp]:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def plot_importance(study, path):
    """How much each setting mattered (Optuna's fANOVA), once there are enough trials to tell."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    try:
        importance = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):  # too few completed trials, or one setting alone
        return
    names = list(importance)[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(names) + 1.2))
    ax.barh(names, [importance[name] for name in names])
    ax.set_xlabel("importance for val bits per byte (fANOVA)")
    fig.tight_layout()
    with replaced_atomically(path, what="plot") as [tmp]:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def print_summary(study, study_dir, space):
    """The table of trials, and where the best settings are."""
    rows = [["trial", "state", "val bpb", "seconds", *space]]
    rows += [[str(cell) for cell in table_row(t, space)] for t in sorted(study.get_trials(deepcopy=False),
                                                                       key=lambda t: t.number)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths)))
    if best_complete(study) is None:
        raise UserError(f"no trial finished: see the trials' train.log in {study_dir}, and trials.csv")
    print(f"{best_line(study)}\nbest settings in {os.path.join(study_dir, 'best.py')}: "
          f"python train.py {os.path.join(study_dir, 'best.py')}")
