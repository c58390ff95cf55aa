"""configurator.configure: config files and --key=value flags over a script's defaults, with one-line errors."""

import sys

import pytest

from conftest import ROOT, configure_as
from smallgpt.configurator import configure, defaults_of, ranges_in, script_settings
from smallgpt.errors import UserError

DEFAULTS = dict(batch_size=12, learning_rate=1e-3, compile=False, device="auto", dataset="shakespeare_char",
                compile_mode=None)


def error_of(argv):
    with pytest.raises(UserError) as e:
        configure(DEFAULTS, argv)
    return str(e.value)


def test_no_arguments_keep_the_defaults():
    assert configure(DEFAULTS, []) == DEFAULTS


def test_flags_are_parsed_by_the_type_of_their_default():
    config = configure(DEFAULTS, ["--batch_size=32", "--learning_rate=3e-4", "--compile=True", "--device=cuda",
                                  "--dataset=2024", "--compile_mode=7"])
    assert config == dict(batch_size=32, learning_rate=3e-4, compile=True, device="cuda", dataset="2024",
                          compile_mode=7)
    assert isinstance(config["dataset"], str)


def test_an_int_is_fine_for_a_float_key_and_booleans_may_be_lower_case():
    config = configure(DEFAULTS, ["--learning_rate=1", "--compile=false"])
    assert config["learning_rate"] == 1.0 and isinstance(config["learning_rate"], float)
    assert config["compile"] is False


def test_quoted_strings_lose_their_quotes():
    assert configure(DEFAULTS, ["--device='cpu'"])["device"] == "cpu"


def test_unknown_key_suggests_the_closest():
    message = error_of(["--batchsize=3"])
    assert "unknown key 'batchsize'" in message and "did you mean 'batch_size'" in message


def test_value_of_the_wrong_type_is_refused():
    message = error_of(["--batch_size=abc"])
    assert "batch_size must be int" in message and "'abc'" in message
    assert "learning_rate must be float" in error_of(["--learning_rate=fast"])
    assert "compile must be bool" in error_of(["--compile=1"])


def test_flag_without_a_value_is_refused():
    assert "has no value" in error_of(["--compile"])


def test_config_file_sets_keys_and_later_flags_win(tmp_path):
    cfg = tmp_path / "my.py"
    cfg.write_text("import math\nbatch_size = 64\nlearning_rate = batch_size * 1e-5\n_private = 1\n")
    config = configure(DEFAULTS, [str(cfg), "--batch_size=8"])
    assert config["batch_size"] == 8
    assert config["learning_rate"] == pytest.approx(64e-5)


def test_config_file_errors_are_one_line(tmp_path):
    assert "config file 'nope.py' not found" in error_of(["nope.py"])
    assert "flags need two dashes" in error_of(["batch_size=3"])
    bad_key = tmp_path / "bad_key.py"
    bad_key.write_text("batch_szie = 3\n")
    message = error_of([str(bad_key)])
    assert "unknown key 'batch_szie'" in message and "did you mean 'batch_size'" in message
    bad_type = tmp_path / "bad_type.py"
    bad_type.write_text("batch_size = 'many'\n")
    assert "batch_size must be int" in error_of([str(bad_type)])
    broken = tmp_path / "broken.py"
    broken.write_text("batch_size = 1 / 0\n")
    assert "ZeroDivisionError" in error_of([str(broken)])


SCRIPTS = ("train.py", "sample.py", "prepare.py", "eval.py", "tune.py", "bench.py", "export.py")


def test_values_outside_their_range_are_refused_with_the_range():
    defaults = dict(batch_size=12, dropout=0.0, top_p=1.0, temperature=0.8, max_new_tokens=500, attn_scale=1.0)
    ranges = {**ranges_in(ROOT / "train.py"), **ranges_in(ROOT / "sample.py")}
    error = lambda *argv: str(pytest.raises(UserError, configure, defaults, list(argv), ranges).value)
    assert error("--batch_size=0") == "batch_size must be at least 1, got 0"
    assert error("--dropout=1.5") == "dropout must be in [0, 1), got 1.5"
    assert error("--dropout=-0.1") == "dropout must be in [0, 1), got -0.1"
    assert error("--top_p=0") == "top_p must be in (0, 1], got 0.0"
    assert error("--max_new_tokens=-5") == "max_new_tokens must be 0 or more, got -5"
    assert error("--attn_scale=1e999") == "attn_scale must be a finite number, got inf"
    assert error("--temperature=0").endswith("; for nearly greedy sampling use e.g. 0.01 or --top_k=1")
    assert configure(defaults, ["--dropout=0", "--top_p=1", "--batch_size=1"], ranges)["top_p"] == 1.0  # its ends


def test_a_range_stands_beside_its_setting_and_allows_none_and_whole_numbers(tmp_path):
    script = tmp_path / "script.py"
    script.write_text('limit = None  # None or int [1, inf): the first examples only\n'
                      'compile = None  # one of None, True, False\n'
                      'steps = 10  # [0, inf)\n'
                      'name = "a"  # a name: not a range\n')
    assert ranges_in(script) == {"limit": "None or int [1, inf)", "compile": "one of None, True, False",
                                 "steps": "[0, inf)"}
    settings = {**script_settings(script), "__file__": str(script)}  # as the script's globals() would have it
    assert configure(settings, ["--limit=3", "--compile=True"]) == dict(limit=3, compile=True, steps=10, name="a")
    assert configure(settings, [])["limit"] is None
    error = lambda *argv: str(pytest.raises(UserError, configure, settings, list(argv)).value)
    assert error("--limit=2.5") == "limit must be a whole number at least 1, got 2.5"
    assert error("--limit=0") == "limit must be a whole number at least 1, got 0"
    assert error("--compile=maybe") == "compile must be True or False, got 'maybe'"
    assert error("--compile=1") == "compile must be True or False, got 1"
    assert error("--steps=-1") == "steps must be 0 or more, got -1"


def test_five_minutes_after_a_recipe_trains_its_model_for_a_time_and_evaluates_once():
    recipe = [str(ROOT / "config" / "shakespeare_char_cpu.py")]
    alone, timed = configure_as("train.py", recipe), configure_as("train.py", recipe + [str(ROOT / "config" /
                                                                                          "five_minutes.py")])
    assert {key for key in alone if alone[key] != timed[key]} == {"max_seconds", "eval_interval", "eval_iters"}
    assert timed["max_seconds"] == 300 and timed["eval_interval"] > 300 / 0.001  # more steps than can fit


def test_every_range_is_well_formed():
    for script in SCRIPTS:
        for key, spec in ranges_in(ROOT / script).items():
            if spec.startswith("one of "):
                choices = spec[len("one of "):].split(", ")
                assert len(set(choices)) == len(choices) > 1, key
                continue
            interval = spec.partition("; ")[0].removeprefix("None or ").removeprefix("int ")
            low, high = (float(end) for end in interval[1:-1].split(", "))
            assert interval[0] in "[(" and interval[-1] in "])" and low < high, key


def test_choices_are_checked_and_match_what_the_code_offers():
    from model import ACTIVATIONS
    assert ranges_in(ROOT / "train.py")["activation"] == "one of " + ", ".join(ACTIVATIONS)
    error = str(pytest.raises(UserError, configure_as, "train.py", ["--dtype=fp8"]).value)
    assert error == "unknown dtype 'fp8': use auto, float32, bfloat16, float16"


def test_defaults_of_takes_a_scripts_settings_and_nothing_else():
    import math
    namespace = dict(batch_size=12, learning_rate=1e-3, compile=None, device="auto", CHUNK_CHARS=1 << 20, _private=1,
                     math=math, configure=configure, UserError=UserError, __name__="__main__")
    assert defaults_of(namespace) == dict(batch_size=12, learning_rate=1e-3, compile=None, device="auto")


@pytest.mark.parametrize("script", ["train.py", "sample.py", "tune.py"])
def test_a_partial_install_is_told_before_a_run_starts(monkeypatch, script):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as Python sees a package that is not installed
    with pytest.raises(UserError, match=r"^matplotlib is not installed: pip install -r requirements.txt$"):
        configure_as(script, [])
