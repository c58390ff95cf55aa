"""
Command-line configuration shared by the scripts (prepare.py, train.py, sample.py, eval.py, tune.py, export.py,
bench.py).

Each script keeps its settings as plain module-level values and hands them to
`configure`, together with its command-line arguments:

    python train.py config/shakespeare_char.py --batch_size=32 --compile=False

An argument without a leading `--` is a Python config file: it is exec'd and
may assign any of the script's keys. An argument `--key=value` sets one key;
the value is read as a Python literal (`32`, `3e-4`, `False`, `'gpt2'`) and
taken as a plain string when it is not one (`--device=cuda`). Later arguments
win. Every key must be one the script knows, and every value must have the
type of the default it replaces (an int is fine where a float is expected;
a key whose default is None takes any value).

A setting's valid values stand beside it, at the start of its comment (up to a
': ' and the setting's description): an interval, where '[' and ']' include an
end and '(' and ')' leave it out, optionally after 'None or ' and 'int ' (a
whole number), and before a hint for the error message after '; '; or 'one of'
and the choices:

    dropout = 0.0  # [0, 1): 0 for pretraining, 0.1+ for finetuning or small data
    limit = None  # None or int [1, inf)
    dtype = "auto"  # one of auto, float32, bfloat16, float16

A mistake raises UserError, and configure makes every UserError end the script
with one line on stderr that says what to fix, never with a traceback (see
errors.py).

- configure(settings, argv, ranges): a script's settings (its globals()) with argv applied and checked, each
  against its range (by default, those written in the script's file).
- script_settings(path), ranges_in(path): a script's settings, and their ranges, read from its source without
  running it.
- defaults_of(settings): the settings' values, the plain lower-case ones.
- check_range(key, value, spec): UserError unless value is valid for spec.
"""

import ast
import difflib
import importlib.util
import io
import math
import os
import re
import sys
import tokenize

from smallgpt.errors import UserError, report_user_errors
from smallgpt.files import read_text

NUMBER = r"-?(?:inf|[0-9.]+(?:e[-+]?[0-9]+)?)"
REQUIRED = ("numpy", "tiktoken", "tokenizers", "tqdm", "matplotlib", "optuna")  # requirements.txt's, less torch
RANGE = re.compile(rf"(None or )?(int )?[\[(]{NUMBER}, {NUMBER}[\])](; .*)?$|one of \S.*$")


def defaults_of(settings):
    """
    A script's settings from its globals(): the values named in lower case (constants are in upper case) that are
    numbers, booleans, strings or None, which leaves out modules, functions and classes.
    """
    return {key: value for key, value in settings.items() if key.islower() and not key.startswith("_")
            and (value is None or isinstance(value, (int, float, bool, str)))}


def script_settings(path):
    """The settings of the script at path, as defaults_of its globals() would give them, read from its source
    without running it: the module-level lower-case names bound to literals."""
    settings = {}
    for node, name in module_assignments(read_text(path, "script")):
        try:
            settings.setdefault(name, ast.literal_eval(node.value))
        except ValueError:
            continue
    return settings


def ranges_in(path):
    """{setting: spec} of the settings of the script at path whose comment begins with their valid values."""
    source = read_text(path, "script")
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    comments = {token.start[0]: token.string[1:].strip() for token in tokens if token.type == tokenize.COMMENT}
    ranges = {}
    for node, name in module_assignments(source):
        spec = comments.get(node.end_lineno, "").partition(": ")[0]
        if isinstance(node.value, ast.Constant) and RANGE.match(spec):
            ranges.setdefault(name, spec)
    return ranges


def module_assignments(source):
    """(node, name) of each module-level `name = value` in source whose name is a setting's."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name.islower() and not name.startswith("_"):
                yield node, name


def configure(settings, argv, ranges=None):
    """
    The script's settings (its globals()) as a dict, with the config files and --key=value flags in argv applied,
    each value checked against its spec in ranges (by default, those written in the settings' script, __file__).
    """
    report_user_errors()
    check_installed()
    config = defaults_of(settings)
    ranges = ranges_in(settings["__file__"]) if ranges is None and "__file__" in settings else ranges or {}
    for arg in argv:
        if arg.startswith("--"):
            key, sep, raw = arg[2:].partition("=")
            if not sep:
                raise UserError(f"flag '{arg}' has no value: write it as --{key}=VALUE")
            check_known(key, config, where=f"flag --{key}")
            config[key] = convert(key, parse_literal(raw, config[key]), config[key], where=f"--{key}")
        else:
            for key, value in run_config_file(arg, config).items():
                check_known(key, config, where=f"config file {arg}")
                config[key] = convert(key, value, config[key], where=arg)
    for key, value in config.items():
        if key in ranges:
            check_range(key, value, ranges[key])
    return config


def check_installed():
    """UserError unless requirements.txt's packages are all there: a partial install is told before a run starts,
    not by a traceback at its first plot (after all of the training)."""
    missing = [name for name in REQUIRED if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed: "
                        f"pip install -r requirements.txt")


def check_range(key, value, spec):
    """UserError unless value lies in spec's interval or is one of its choices (a spec as ranges_in reads them)."""
    if spec.startswith("one of "):
        choices = [literal_or_text(choice) for choice in spec[len("one of "):].split(", ")]
        if value in choices and type(value) in [type(choice) for choice in choices if choice == value]:
            return
        if all(isinstance(choice, str) for choice in choices):
            raise UserError(f"unknown {key} '{value}': use {', '.join(choices)}")
        shown = [repr(choice) for choice in choices if choice is not None]
        raise UserError(f"{key} must be {', '.join(shown[:-1])} or {shown[-1]}, got {value!r}")
    spec, _, hint = spec.partition("; ")
    if spec.startswith("None or "):
        if value is None:
            return
        spec = spec[len("None or "):]
    whole = spec.startswith("int ")
    interval = spec.removeprefix("int ")
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number and not whole:  # a value of the wrong type is the type check's to report
        return
    low, high = (float(end) for end in interval[1:-1].split(", "))
    if number and not math.isfinite(value) and not (value == high and interval[-1] == "]"):
        raise UserError(f"{key} must be a finite number, got {value}")
    inside = number and (low <= value if interval[0] == "[" else low < value) and (
        value <= high if interval[-1] == "]" else value < high)
    if inside and (isinstance(value, int) or not whole):
        return
    if hint.startswith("must be "):  # the hint says it all
        raise UserError(f"{key} {hint}, got {value!r}")
    if high < float("inf"):
        allowed = f"in {interval}"
    elif interval[0] == "(":
        allowed = f"above {low:g}"
    else:
        allowed = "0 or more" if low == 0 else f"at least {low:g}"
    raise UserError(f"{key} must be {'a whole number ' if whole else ''}{allowed}, got {value}"
                    + (f"; {hint}" if hint else ""))


def run_config_file(path, config):
    """Exec a user's config file and return the keys it assigned."""
    if not os.path.exists(path) and not path.endswith(".py"):
        raise UserError(f"config file '{path}' not found (flags need two dashes: --key=value)")
    source = read_text(path, "config file")
    namespace = dict(config)
    try:
        exec(compile(source, path, "exec"), namespace)
    except Exception as e:  # the user's own code: report it in one line
        raise UserError(f"config file {path} failed: {type(e).__name__}: {e}")
    return {k: v for k, v in namespace.items()
            if not k.startswith("_") and not callable(v) and not isinstance(v, type(sys))
            and (k not in config or v is not config[k])}


def check_known(key, config, where):
    if key in config:
        return
    close = difflib.get_close_matches(key, list(config), n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(sorted(config))}"
    raise UserError(f"unknown key '{key}' in {where}{hint}")


def literal_or_text(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_literal(raw, default):
    """Read a flag's text: a Python literal where it is one, else the text itself."""
    if isinstance(default, bool) and raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw
    # a string key keeps the text as typed, so --dataset=2024 stays '2024'
    if isinstance(default, str) and not isinstance(value, str):
        return raw
    return value


def convert(key, value, default, where):
    """Check that value can replace default; widen an int to a float where a float is expected."""
    if default is None:
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not type(default):
        raise UserError(f"{where}: {key} must be {type(default).__name__} like {default!r}, "
                        f"got {type(value).__name__} {value!r}")
    return value
