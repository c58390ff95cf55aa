"""
tune.py's search space: what a tune config's `search` may say, checked against train.py's settings and their
ranges, and a trial's settings drawn from it.

- search_space(search, defaults, ranges): the search in a tune config, checked: {setting: ("int" | "float", low,
  high, log) or ("choice", [values])}.
- check_trial_settings(config, space): refuses what a trial cannot train with (init_from='resume', eval_only).
- starting_point(config, space): the config's own values of the searched settings, a new study's first trial.
- suggest(trial, space): one value of each setting, drawn by the trial's sampler.
- flags_of(settings): --key=value flags that configure reads back as the same values.
"""

import difflib

from smallgpt.configurator import check_range, convert
from smallgpt.errors import UserError

PER_TRIAL = ("out_dir",)  # the one setting that tune.py sets for each trial itself: trial_N's folder


def search_space(search, defaults, ranges):
    """
    {setting: ("int" | "float", low, high, log) or ("choice", [values])} of a tune config's search: a uniform range
    (low, high), of ints or floats as the bounds are; a log range (low, high, "log"); a list of choices. defaults
    and ranges: train.py's settings, and their ranges, which every value must lie in.
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
        space[key] = parse_range(key, spec, defaults[key], ranges.get(key))
    return space


def parse_range(key, spec, default, valid):
    """A setting's range or choices in the search; valid: the setting's own range, if it has one."""
    check = lambda value: valid is None or check_range(key, value, valid)
    where = f"search['{key}']"
    if isinstance(spec, list):
        if not spec:
            raise UserError(f"{where} is an empty list of choices: give at least one value")
        choices = [convert(key, value, default, where) for value in spec]
        for value in choices:
            check(value)
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
    check(low)
    check(high)
    return (kind, low, high, is_log)


def check_trial_settings(config, space):
    """UserError for the settings that a trial cannot train with: every trial trains anew in a folder of its own."""
    starts = space["init_from"][1] if "init_from" in space else [config["init_from"]]
    if "resume" in starts:
        raise UserError("init_from='resume' cannot start a trial, which trains anew in a folder of its own: start "
                        "from 'scratch', a GPT-2 model or a folder (a finetuning search), or train on with train.py")
    if config["eval_only"] or "eval_only" in space:
        raise UserError("eval_only=True trains nothing, and a trial is scored by what it learns: leave it out")


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
