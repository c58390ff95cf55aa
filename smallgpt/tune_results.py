"""
What tune.py writes of a study into its study_dir, and prints at the end.

- write_results(study, study_dir, fixed, space): trials.csv, best.py, history.png and importance.png.
- best_config(fixed, params): best.py's text, a config file of the best trial's settings.
- print_summary(study, study_dir, space): the table of trials and where the best settings are.
"""

import csv
import os
import sys
import warnings

from smallgpt.errors import UserError
from smallgpt.files import replaced_atomically
from smallgpt.metrics import pyplot, save_figure
from smallgpt.tune_study import best_complete, best_line, format_value

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
    try:  # a plot that cannot be written is worth a line, never a worker
        plot_history(complete, os.path.join(study_dir, "history.png"))
        plot_importance(study, os.path.join(study_dir, "importance.png"))
    except UserError as e:
        print(f"warning: {e}", file=sys.stderr)


def table_row(trial, space):
    """number, state, val bpb, seconds and each setting of a trial, as text."""
    value = "" if trial.value is None else f"{trial.value:.4f}"
    seconds = trial.user_attrs.get("seconds", "")
    return [trial.number, trial.state.name.lower(), value, f"{seconds:.0f}" if seconds != "" else "",
            *(format_value(trial.params.get(key, "")) for key in space)]


def plot_history(complete, path):
    plt = pyplot()
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
    save_figure(fig, path)


def plot_importance(study, path):
    """How much each setting mattered (Optuna's fANOVA), once there are enough trials to tell."""
    plt = pyplot()
    import optuna
    try:
        with warnings.catch_warnings():  # Optuna's advice on few trials: the plot is a hint, read as one
            warnings.simplefilter("ignore")
            importance = optuna.importance.get_param_importances(  # fANOVA, named: Optuna's default has changed
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except (RuntimeError, ValueError):  # too few completed trials, or one setting alone
        return
    names = list(importance)[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(names) + 1.2))
    ax.barh(names, [importance[name] for name in names])
    ax.set_xlabel("importance for val bits per byte (fANOVA)")
    fig.tight_layout()
    save_figure(fig, path)


def print_summary(study, study_dir, space, stopped=False):
    """The table of trials, and where the best settings are; a UserError if no trial finished, unless the search was
    stopped (by Ctrl-C), which is no error."""
    rows = [["trial", "state", "val bpb", "seconds", *space]]
    rows += [[str(cell) for cell in table_row(t, space)] for t in sorted(study.get_trials(deepcopy=False),
                                                                       key=lambda t: t.number)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths)))
    if best_complete(study) is None:
        if stopped:
            return
        raise UserError(f"no trial finished: see the trials' train.log in {study_dir}, and trials.csv")
    print(f"{best_line(study)}\nbest settings in {os.path.join(study_dir, 'best.py')}: "
          f"python train.py {os.path.join(study_dir, 'best.py')}")
