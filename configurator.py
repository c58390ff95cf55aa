"""
Command-line configuration shared by prepare.py, train.py and sample.py.

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

Mistakes end the program with one line on stderr that says what to fix, never
with a traceback: see `fail`. `resolve_device` and `resolve_dtype` turn the
'auto' settings of train.py and sample.py into the device and dtype to use, and
`mixed_precision` gives the autocast context for that dtype.
"""

import ast
import difflib
import os
import sys
from contextlib import nullcontext


def fail(message):
    """Exit with a one-line error on stderr and exit status 1."""
    sys.exit(f"error: {message}")


def configure(defaults, argv):
    """Return a copy of `defaults` with the config files and --key=value flags in argv applied."""
    config = dict(defaults)
    for arg in argv:
        if arg.startswith("--"):
            key, sep, raw = arg[2:].partition("=")
            if not sep:
                fail(f"flag '{arg}' has no value: write it as --{key}=VALUE")
            check_known(key, config, where=f"flag --{key}")
            config[key] = convert(key, parse_literal(raw, config[key]), config[key], where=f"--{key}")
        else:
            for key, value in run_config_file(arg, config).items():
                check_known(key, config, where=f"config file {arg}")
                config[key] = convert(key, value, config[key], where=arg)
    return config


def run_config_file(path, config):
    """Exec a user's config file and return the keys it assigned."""
    if not os.path.isfile(path):
        hint = " (flags need two dashes: --key=value)" if not path.endswith(".py") else ""
        fail(f"config file '{path}' not found{hint}")
    with open(path, encoding="utf-8") as f:
        source = f.read()
    namespace = dict(config)
    try:
        exec(compile(source, path, "exec"), namespace)
    except Exception as e:  # the user's own code: report it in one line
        fail(f"config file {path} failed: {type(e).__name__}: {e}")
    return {k: v for k, v in namespace.items()
            if not k.startswith("_") and not callable(v) and not isinstance(v, type(sys))
            and (k not in config or v is not config[k])}


def check_known(key, config, where):
    if key in config:
        return
    close = difflib.get_close_matches(key, list(config), n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(sorted(config))}"
    fail(f"unknown key '{key}' in {where}{hint}")


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
        fail(f"{where}: {key} must be {type(default).__name__} like {default!r}, "
             f"got {type(value).__name__} {value!r}")
    return value


def resolve_device(device):
    """'auto' -> the best device here (cuda, then mps, then cpu); anything else is checked to exist."""
    import torch
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    kind, _, index = device.partition(":")
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            fail(f"device '{device}' is not available: this machine has no CUDA GPU that torch can use; "
                 f"use --device=cpu (or leave device to 'auto')")
        if index and (not index.isdigit() or int(index) >= count):
            fail(f"device '{device}' is not available: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    elif kind == "mps":
        if not torch.backends.mps.is_available():
            fail(f"device '{device}' is not available: MPS needs an Apple-silicon Mac; use --device=cpu")
    elif device != "cpu":
        fail(f"unknown device '{device}': use auto, cpu, cuda, cuda:N or mps")
    return device


def resolve_dtype(dtype, device_type):
    """'auto' -> what the device runs fast: bfloat16 on CUDA where supported, else float16 there; float32 elsewhere."""
    import torch
    if dtype == "auto":
        if device_type == "cuda":
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        return "float32"
    if dtype not in ("float32", "bfloat16", "float16"):
        fail(f"unknown dtype '{dtype}': use auto, float32, bfloat16 or float16")
    if dtype == "bfloat16" and device_type == "cuda" and not torch.cuda.is_bf16_supported():
        fail("this GPU does not support bfloat16: use --dtype=float16")
    return dtype


def mixed_precision(device_type, dtype):
    """The context to run a model in at dtype (a name that resolve_dtype returned): mixed precision below float32."""
    import torch
    return nullcontext() if dtype == "float32" else torch.amp.autocast(device_type=device_type, dtype=getattr(torch, dtype))
