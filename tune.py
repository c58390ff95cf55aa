"""
Find good train.py settings for your own text: a search with Optuna, each trial a train.py run.

    python tune.py config/tune_shakespeare_char_cpu.py              # search, print the best settings found
    python tune.py config/tune_shakespeare_char_cpu.py --trials=60  # go on until the study has 60 finished trials
    python train.py out-tune/best.py                                # train with the best settings found
    optuna-dashboard out-tune/journal.log                           # watch it (pip install optuna-dashboard)

Settings: every train.py setting, the same for all trials (config files, then --key=value; init_from too, for a
finetuning search), and tune.py's own below. The tune config's `search` says what to try: {"learning_rate": (1e-4,
1e-2, "log"), "n_layer": [2, 3, 4], "dropout": (0.0, 0.3)}: (low, high) a uniform range, of ints or floats as the
bounds are; (low, high, "log") a log range; [a, b, ...] choices. A new study's first trial takes the config's own
values of those settings, so that the search sets out from what you have. Each trial runs train.py in
study_dir/trial_N with its settings as flags (on Linux in a fork of tune.py, which imports torch once for all
trials), and scores its best val bits per byte, which compares tokenizers too. Optuna's TPE sampler draws the
settings (seeded for each trial by its number); its median pruner stops (SIGTERM) a trial whose evaluations fall
behind the others' at the same share of the trial's time (with max_seconds) or steps, between 40% and 70% of it.
Running the same command again continues the study; so do workers on other machines given the same database
`storage`. A study_dir holds one study's files. Each worker records a heartbeat with its running trial, so that a
trial whose worker died anywhere is failed and run again. Ctrl-C stops the running trial and the search. Only the
best trial keeps its ckpt.pt; best.py holds the best trial's own settings. See smallgpt/tune_*.py.
"""

import os
import sys
import time

from smallgpt.configurator import configure, ranges_in, script_settings
from smallgpt.errors import UserError
from smallgpt.files import make_dir
from smallgpt.tune_results import print_summary, write_results
from smallgpt.tune_space import PER_TRIAL, check_trial_settings, flags_of, search_space, starting_point, suggest
from smallgpt.tune_study import (INTERRUPTED, check_study_space, claim_study_dir, deferred_ctrl_c,
                                 drop_checkpoints_but_the_best, fail_stale_trials, make_trial_dir, open_study,
                                 record_trial, rerun_interrupted, this_worker, trials_taken)
from smallgpt.tune_trials import FORK_TRIALS, preload, run_trial

ROOT = os.path.dirname(os.path.abspath(__file__))
TRAIN_DEFAULTS = script_settings(os.path.join(ROOT, "train.py"))  # read from its source: nothing runs
TRAIN_RANGES = ranges_in(os.path.join(ROOT, "train.py"))
FAILURES_IN_A_ROW = 5  # then the search stops: the settings it is given are likely at fault, not the draw

# -----------------------------------------------------------------------------
trials = 20  # [1, inf): finished (complete or pruned) trials the study should have, over all its workers
study_dir = "out-tune"  # trial_N/ folders, trials.csv, best.py, the plots, and the default storage
storage = ""  # '': a journal file in study_dir; or a database URL that workers on several machines share
study_name = "smallgpt"  # the study within the storage
timeout = 0.0  # [0, inf): seconds for this worker's search (0: none); a trial starts only if its max_seconds fit
prune_after = 5  # [0, inf): complete trials before the pruner compares a trial's evaluations with theirs
search = None  # {train.py setting: range or choices}, in the tune config file
torchrun = ""  # run each trial as `torchrun THESE train.py ...`, e.g. '--standalone --nproc_per_node=4'
# -----------------------------------------------------------------------------
config = configure({**TRAIN_DEFAULTS, **globals()}, sys.argv[1:], {**TRAIN_RANGES, **ranges_in(__file__)})
globals().update(config)
# -----------------------------------------------------------------------------

space = search_space(search, TRAIN_DEFAULTS, TRAIN_RANGES)
check_trial_settings(config, space)
fixed = {key: config[key] for key in TRAIN_DEFAULTS  # what every trial gets: the settings changed from train.py's
         if config[key] != TRAIN_DEFAULTS[key] and key not in space and key not in PER_TRIAL}
make_dir(study_dir, "study_dir")
claim_study_dir(study_dir, storage, study_name)  # one study's files to a folder
study = open_study(storage, study_name, study_dir, config["seed"], prune_after)
check_study_space(study, space)
if not study.trials:  # a new study tries the config's own settings first: the search sets out from what you have
    study.enqueue_trial(starting_point(config, space), skip_if_exists=True)
launcher = [sys.executable, "-m", "torch.distributed.run", *torchrun.split()] if torchrun else []
if not launcher and FORK_TRIALS:
    preload(os.path.join(ROOT, "train.py"))  # once, not in every trial
print(f"study '{study_name}' in {storage or study_dir}: {len(space)} settings searched, {trials} trials wanted")

started, failures, trial, stopped = time.time(), 0, None, False
try:
    while True:
        fail_stale_trials(study)  # trials whose worker was killed, here or elsewhere, stop counting
        if trials_taken(study) >= trials:  # done, or other workers are running the last ones
            break
        if timeout and time.time() - started + config["max_seconds"] > timeout:  # a trial of that time would not fit
            print(f"timeout: the {timeout:g}s of this search are over")
            break
        with deferred_ctrl_c():  # a trial cut off here would have no worker recorded with it
            rerun_interrupted(study)  # first, the trials that Ctrl-C or a worker's end cut short
            trial, trial_started = study.ask(), time.time()
            trial.set_user_attr("worker", this_worker())
            trial.set_user_attr("heartbeat", time.time())
            trial.set_user_attr("fixed", fixed)  # with the trial's params, what best.py needs to train it again
        if trials_taken(study, before=trial.number) >= trials:  # another worker took the last trial meanwhile
            record_trial(study, trial, "failed", None, 0.0, "not run: the study had all its trials")
            break
        settings = suggest(trial, space)
        trial_dir = make_trial_dir(study_dir, trial.number)
        argv = [os.path.join(ROOT, "train.py"), *flags_of({**fixed, **settings}), f"--out_dir={trial_dir}"]
        trial_settings = {**config, **settings}
        state, value, seconds, error = run_trial(trial, launcher, argv, trial_dir, trial_settings["max_seconds"],
                                                 trial_settings["max_iters"])
        record_trial(study, trial, state, value, seconds, error)
        trial = None
        drop_checkpoints_but_the_best(study, study_dir)
        failures = failures + 1 if state == "failed" else 0
        if failures == FAILURES_IN_A_ROW:
            raise UserError(f"{FAILURES_IN_A_ROW} trials in a row failed, the last with: {error}")
except KeyboardInterrupt:
    if trial is not None:
        record_trial(study, trial, "failed", None, time.time() - trial_started, INTERRUPTED)
        log_path = os.path.join(study_dir, f"trial_{trial.number}", "train.log")
        if os.path.exists(log_path):  # train.py's advice to resume is for a run of its own: a trial runs again
            with open(log_path, "a") as log:
                print("tune.py: stopped by Ctrl-C; the same tune.py command runs this trial again", file=log)
    print("stopped: run the same command to continue the study (a trial cut short runs again)")
    stopped = True
except UserError as e:  # the trial that was under way is told why
    if trial is not None:
        record_trial(study, trial, "failed", None, 0.0, str(e))
    raise
finally:  # also when the search gives up: the table says why each trial failed
    write_results(study, study_dir, fixed, space)
print_summary(study, study_dir, space, stopped)
