"""
tune.py's study in Optuna: where it is kept, how its sampler draws, and the bookkeeping of its trials among
workers on one machine or several. Optuna is imported only inside the functions that use it.

- open_study(storage, name, study_dir, seed, prune_after): the study, in study_dir's journal file or a database,
  with a TPE sampler seeded for each trial by its number.
- check_study_space(study, space): the search space must be the one the study's trials were drawn from.
- claim_study_dir, make_trial_dir: a study_dir holds one study's files, and a trial's folder is new.
- trials_taken, record_trial, fail_stale_trials, rerun_interrupted, drop_checkpoints_but_the_best: the trials'
  bookkeeping;
  best_complete, best_line: the best trial so far.
- deferred_ctrl_c: a block that a Ctrl-C does not cut short.
"""

import json
import os
import signal
import socket
import time
from contextlib import contextmanager

from smallgpt.errors import UserError
from smallgpt.files import read_text

# a running trial whose last heartbeat (tune_trials.py's, every HEARTBEAT_SECONDS) is older than this, by the clock
# of the machine that looks, lost its worker: keep the machines' clocks in time
STALE_SECONDS = 120
INTERRUPTED = "stopped by Ctrl-C"  # a trial failed so (or with no error, its worker gone) is run again

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


def format_value(value):
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def this_worker():
    return f"{socket.gethostname()}:{os.getpid()}"


def rerun_interrupted(study):
    """
    Enqueue again, once, each failed trial that was interrupted (by Ctrl-C, or its worker gone) rather than failed by
    its settings: every setting the study drew is tried, the config's own first.
    """
    import optuna
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    for t in trials:
        params = t.system_attrs.get("fixed_params", t.params)
        if t.state == optuna.trial.TrialState.FAIL and t.user_attrs.get("error", INTERRUPTED) == INTERRUPTED \
                and params and t.number not in retried:
            study.enqueue_trial(params, user_attrs={"retry_of": t.number})


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
