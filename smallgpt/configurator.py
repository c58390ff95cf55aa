"""
Command-line configuration shared by the scripts (prepare.py, train.py, sample.py, bench.py, export.py).

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

Every value must also lie in its range, or be one of its choices: RANGES holds
them for every script. A mistake raises UserError, and configure makes every
UserError end the script with one line on stderr that says what to fix, never
with a traceback (see errors.py).

- defaults_of(namespace): a script's settings, its plain lower-case module-level values.
- configure(defaults, argv): the settings with argv applied and checked.
"""

import ast
import difflib
import os
import sys

from smallgpt.errors import UserError, report_user_errors
from smallgpt.files import read_text

# The valid values of each setting of every script that has it: an interval, where '[' and ']' include an end
# and '(' and ')' leave it out, with a hint for the error message after '; '; or a tuple of the choices.
RANGES = {
    # train.py (and bench.py's model)
    "eval_interval": "[1, inf)", "log_interval": "[1, inf)", "eval_iters": "[1, inf)",
    "gradient_accumulation_steps": "[1, inf)", "batch_size": "[1, inf)", "block_size": "[1, inf)",
    "n_layer": "[1, inf)", "n_head": "[1, inf)", "n_embd": "[1, inf)", "dropout": "[0, 1)", "attn_scale": "(0, inf)",
    "learning_rate": "[0, inf)", "muon_learning_rate": "[0, inf)", "muon_momentum": "[0, 1)", "max_iters": "[0, inf)",
    "weight_decay": "[0, inf)", "beta1": "[0, 1)", "beta2": "[0, 1)", "grad_clip": "[0, inf)",
    "warmup_iters": "[0, inf)", "lr_decay_iters": "[0, inf)", "min_lr": "[0, inf)", "seed": "[0, 4294967295]",
    "activation": ("gelu_tanh", "gelu"), "dtype": ("auto", "float32", "bfloat16", "float16"),
    "backend": ("auto", "nccl", "gloo", "mpi", "ucc", "xccl"),
    # sample.py
    "num_samples": "[1, inf)", "max_new_tokens": "[0, inf)", "top_k": "[0, inf)", "top_p": "(0, 1]",
    "temperature": "(0, inf); for nearly greedy sampling use e.g. 0.01 or --top_k=1",
    # prepare.py
    "val_fraction": "(0, 1)", "vocab_size": "[1, 65536]", "tokenizer": ("char", "gpt2", "bpe"),
    # bench.py
    "part": ("all", "train", "recipe", "sample", "prepare", "tokenizers", "ablation", "eval", "tune"),
    "rounds": "[1, inf)", "steps_per_round": "[1, inf)", "recipe_repeats": "[1, inf)", "char_megabytes": "[1, inf)",
    "gpt2_megabytes": "[1, inf)", "eval_examples": "[1, inf)",
    # eval.py and train.py's HellaSwag
    "eval_hellaswag": "[0, inf)", "batch_tokens": "[1, inf)",
    # train.py's early stop and time budget, and tune.py
    "patience": "[0, inf)", "max_seconds": "[0, inf)", "trials": "[1, inf)", "timeout": "[0, inf)",
    "prune_after": "[0, inf)",
}


def defaults_of(namespace):
    """
    A script's settings from its globals(): the values named in lower case (constants are in upper case) that are
    numbers, booleans, strings or None, which leaves out modules, functions and classes.
    """
    return {key: value for key, value in namespace.items() if key.islower() and not key.startswith("_")
            and (value is None or isinstance(value, (int, float, bool, str)))}


def configure(defaults, argv):
    """Return a copy of `defaults` with the config files and --key=value flags in argv applied."""
    report_user_errors()
    config = dict(defaults)
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
        check_range(key, value)
    return config


def check_range(key, value):
    """UserError unless value lies in the range, or is one of the choices, that RANGES gives its key."""
    if isinstance(RANGES.get(key), tuple) and value not in RANGES[key]:
        raise UserError(f"unknown {key} '{value}': use {', '.join(RANGES[key])}")
    if not isinstance(RANGES.get(key), str) or not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    interval, _, hint = RANGES[key].partition("; ")
    low, high = (float(end) for end in interval[1:-1].split(", "))
    above_low = low <= value if interval[0] == "[" else low < value
    below_high = value <= high if interval[-1] == "]" else value < high
    if above_low and below_high:
        return
    if high < float("inf"):
        allowed = f"in {interval}"
    elif interval[0] == "(":
        allowed = f"above {low:g}"
    else:
        allowed = "0 or more" if low == 0 else f"at least {low:g}"
    raise UserError(f"{key} must be {allowed}, got {value}" + (f"; {hint}" if hint else ""))


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
