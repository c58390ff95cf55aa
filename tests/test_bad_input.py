"""
Bad input, class by class, for every script: settings out of range, files that cannot be read or created, a
disk that fills up while writing. Each ends in one line on stderr, a non-zero exit, and nothing on disk lost.
"""

import json

import numpy as np
import pytest
import torch

from conftest import (TINY, assert_clean_error, configure_as, inside, needs_gpt2_bpe, prepare_in, run_script,
                      sample_text, user_error)
from model import GPT, GPTConfig
from smallgpt.configurator import configure
from smallgpt.files import make_dir, read_text
from smallgpt.hf_format import save_pretrained


def files_in(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("script, flag, message", [
    ("train.py", "--batchsize=4", "unknown key 'batchsize' in flag --batchsize; did you mean 'batch_size'?"),
    ("train.py", "--batch_size=big", "batch_size must be int"),
    ("train.py", "--learning_rate=fast", "learning_rate must be float"),
    ("train.py", "missing_config.py", "config file 'missing_config.py' not found"),
    ("train.py", "--dtype=fp8", "unknown dtype 'fp8'"),
    ("train.py", "--activation=swish", "unknown activation 'swish': use gelu_tanh, gelu"),
    ("train.py", "--attn_scale=0", "attn_scale must be above 0, got 0"),
    ("sample.py", "--max_new_tokens=-5", "max_new_tokens must be 0 or more"),
    ("sample.py", "--temperature=0", "temperature must be above 0"),
    ("sample.py", "--top_p=0", "top_p must be in (0, 1]"),
    ("sample.py", "--min_p=1.5", "min_p must be in [0, 1], got 1.5"),
    ("sample.py", "--repetition_penalty=0", "repetition_penalty must be above 0, got 0"),
    ("sample.py", "--frequency_penalty=1e999", "frequency_penalty must be a finite number, got inf"),
    ("sample.py", "--presence_penalty=-1e999", "presence_penalty must be a finite number, got -inf"),
    ("sample.py", "--temperature=1e999", "temperature must be a finite number, got inf"),
    ("sample.py", "--repetition_penalty=1e999", "repetition_penalty must be a finite number, got inf"),
    ("train.py", "--learning_rate=1e999", "learning_rate must be a finite number, got inf"),
    ("train.py", "--n_layer=-1", "n_layer must be 0 or more, got -1"),
    ("sample.py", "--num_sample=3", "unknown key 'num_sample' in flag --num_sample; did you mean 'num_samples'?"),
    ("train.py", "--learning_rate=-1e-3", "learning_rate must be 0 or more, got -0.001"),
    ("train.py", "--dropout=1.5", "dropout must be in [0, 1), got 1.5"),
    ("train.py", "--max_iters=-5", "max_iters must be 0 or more, got -5"),
    ("train.py", "--beta2=1.0", "beta2 must be in [0, 1), got 1.0"),
    ("train.py", "--seed=-1", "seed must be in [0, 4294967295], got -1"),
    ("train.py", "--backend=carrier-pigeon", "unknown backend 'carrier-pigeon': use auto, nccl, gloo"),
    ("sample.py", "--num_samples=0", "num_samples must be at least 1, got 0"),
    ("sample.py", "--top_k=-1", "top_k must be 0 or more, got -1"),
    ("prepare.py", "--val_fraction=0", "val_fraction must be in (0, 1), got 0.0"),
    ("prepare.py", "--tokenizer=wordpiece", "unknown tokenizer 'wordpiece': use char, gpt2, bpe"),
    ("bench.py", "--rounds=0", "rounds must be at least 1, got 0"),
    ("tune.py", "--trials=0", "trials must be at least 1, got 0"),
    ("eval.py", "--batch_tokens=0", "batch_tokens must be a whole number at least 1, got 0"),
])
def test_bad_settings_are_refused_with_what_to_fix(tmp_path, script, flag, message):
    with inside(tmp_path):
        user_error(lambda: configure_as(script, [flag]), message)


@pytest.mark.parametrize("script, flag", [("train.py", "--max_seconds=2.5"), ("tune.py", "--timeout=90.5")])
def test_a_setting_of_real_numbers_takes_a_fraction(tmp_path, script, flag):
    key, value = flag[2:].split("=")
    with inside(tmp_path):
        assert configure_as(script, [flag])[key] == float(value)


@pytest.mark.slow
@pytest.mark.parametrize("script, args, message", [
    ("train.py", ["--dropout=1.5"], "dropout must be in [0, 1), got 1.5"),
    ("sample.py", ["--num_samples=0"], "num_samples must be at least 1, got 0"),
    ("prepare.py", ["--val_fraction=0"], "val_fraction must be in (0, 1), got 0.0"),
    ("bench.py", ["--part=everything"], "unknown part 'everything'"),
    ("export.py", ["--export_dri=hf"], "unknown key 'export_dri' in flag --export_dri; did you mean 'export_dir'?"),
    ("eval.py", ["--limit=0"], "limit must be a whole number of examples, 1 or more (leave it out for all), got 0"),
    ("tune.py", ["--trials=0"], "trials must be at least 1, got 0"),
])
def test_each_script_refuses_bad_settings_in_one_line_before_anything_runs(tmp_path, script, args, message):
    result = run_script(script, *args, cwd=tmp_path)
    assert_clean_error(result, message)
    assert not list(tmp_path.iterdir())  # refused before anything was made


def test_config_and_prompt_files_that_cannot_be_read(tmp_path):
    (tmp_path / "folder.py").mkdir()
    (tmp_path / "latin1.py").write_bytes(b"# caf\xe9\nbatch_size = 4\n")
    (tmp_path / "prompt.txt").write_bytes(b"ROMEO \xff\n")
    (tmp_path / "prompts").mkdir()
    with inside(tmp_path):
        user_error(lambda: configure({"batch_size": 12}, ["folder.py"]), "config file 'folder.py' is a folder")
        user_error(lambda: configure({"batch_size": 12}, ["latin1.py"]),
                   "config file 'latin1.py' is not UTF-8 text (byte 0xe9")
        user_error(lambda: read_text("prompt.txt", "prompt file"),
                   "prompt file 'prompt.txt' is not UTF-8 text (byte 0xff")
        user_error(lambda: read_text("prompts", "prompt file"), "prompt file 'prompts' is a folder")


@pytest.mark.slow
def test_a_prompt_file_that_cannot_be_read_is_one_line_from_sample_py(tmp_path):
    (tmp_path / "prompt.txt").write_bytes(b"ROMEO \xff\n")
    assert_clean_error(run_script("sample.py", "--start=FILE:prompt.txt", cwd=tmp_path),
                       "prompt file 'prompt.txt' is not UTF-8 text (byte 0xff")


def test_an_input_that_is_a_folder_and_outputs_through_a_file(tmp_path):
    (tmp_path / "texts").mkdir()
    user_error(lambda: prepare_in(tmp_path, "--input=texts"), "input file 'texts' is a folder")
    (tmp_path / "t.txt").write_text(sample_text(5000), encoding="utf-8")
    (tmp_path / "data").write_text("not a folder")
    user_error(lambda: prepare_in(tmp_path, "--input=t.txt"),
               "cannot create the data folder data/t_char: Not a directory")
    assert (tmp_path / "data").read_text() == "not a folder"


def test_a_folder_through_a_file(tmp_path):
    (tmp_path / "plain").write_text("a file")
    with inside(tmp_path):
        user_error(lambda: make_dir("plain/out", "out_dir"), "cannot create out_dir plain/out: Not a directory")
        user_error(lambda: make_dir("plain", "out_dir"),
                   "cannot create out_dir plain: a file of that name is in the way")


@pytest.mark.slow
def test_an_out_dir_through_a_file(char_data):
    (char_data / "plain").write_text("a file")
    assert_clean_error(run_script("train.py", *TINY, "--out_dir=plain/out", cwd=char_data),
                       "cannot create out_dir plain/out: Not a directory")


@pytest.mark.slow
def test_a_full_disk_while_saving_a_checkpoint_keeps_the_previous_one(char_data):
    assert run_script("train.py", *TINY, "--max_iters=4", "--eval_interval=4", cwd=char_data).returncode == 0
    before = files_in(char_data / "out")
    result = run_script("train.py", *TINY, "--max_iters=8", "--eval_interval=4", "--init_from=resume",
                        cwd=char_data, max_file_size=100_000)  # the checkpoint is about 350 KB
    assert_clean_error(result, "could not write checkpoint out/ckpt.pt: File too large",
                       "the previous checkpoint is intact")
    after = files_in(char_data / "out")
    assert after["ckpt.pt"] == before["ckpt.pt"] and not any(name.endswith(".tmp") for name in after)
    assert torch.load(char_data / "out" / "ckpt.pt", weights_only=True)["iter_num"] == 4


@pytest.mark.slow
def test_a_full_disk_while_preparing_keeps_the_previous_dataset(tmp_path):
    (tmp_path / "t.txt").write_text(sample_text(40_000), encoding="utf-8")
    prepare_in(tmp_path, "--input=t.txt", "--val_fraction=0.5")
    (tmp_path / "t.txt").write_text(sample_text(40_000) * 3, encoding="utf-8")
    before = files_in(tmp_path / "data")
    result = run_script("prepare.py", "--input=t.txt", "--val_fraction=0.5", cwd=tmp_path, max_file_size=60_000)
    assert_clean_error(result, "could not write dataset data/t_char/train.bin, data/t_char/val.bin, "
                               "data/t_char/meta.json: File too large; the previous dataset is intact")
    assert files_in(tmp_path / "data") == before


@pytest.mark.slow
def test_a_full_disk_or_a_file_in_the_way_while_exporting(tmp_path):
    pytest.importorskip("safetensors")
    args = dict(n_layer=2, n_head=2, n_embd=64, block_size=32, vocab_size=50304, bias=True)
    (tmp_path / "out").mkdir()
    torch.save({"model": GPT(GPTConfig(**args)).state_dict(), "model_args": args,
                "tokenizer": {"tokenizer": "gpt2", "vocab_size": 50257, "encoding": "gpt2"}},
               tmp_path / "out" / "ckpt.pt")
    result = run_script("export.py", cwd=tmp_path, max_file_size=1_000_000)  # the weights take 13 MB
    assert_clean_error(result, "could not write model out/hf/model.safetensors, out/hf/config.json, "
                               "out/hf/generation_config.json: File too large")
    assert not list((tmp_path / "out" / "hf").iterdir())
    (tmp_path / "plain").write_text("a file")
    with inside(tmp_path):
        user_error(lambda: save_pretrained(GPT(GPTConfig(**args)), "plain/hf"),
                   "cannot create the model folder plain/hf: Not a directory")


@needs_gpt2_bpe
def test_special_token_text_in_a_text_is_ordinary_text(tmp_path):
    """tiktoken before 0.11 turned it into the special token <|endoftext|>: false document boundaries."""
    import tiktoken
    text = "Some text, then <|endoftext|> as text, then more.\n" * 400
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    prepare_in(tmp_path, "--input=t.txt", "--tokenizer=gpt2")
    ids = np.fromfile(tmp_path / "data" / "t" / "train.bin", dtype=np.uint16)
    assert ids.tolist() == tiktoken.get_encoding("gpt2").encode_ordinary(text[:int(len(text) * 0.9)])


@needs_gpt2_bpe
@pytest.mark.parametrize("name, content, where", [
    ("t.txt", "a line\nthen" + " " * 1_500_000 + "x\n" + "more text\n" * 30_000, "t.txt: "),
    ("d.jsonl", "".join(json.dumps({"text": f"doc {i}" + " " * 1_500_000 * (i == 3) + "x"}) + "\n" for i in range(30)),
     "a document of d.jsonl: "),
])
def test_a_whitespace_run_too_long_for_tiktoken_is_named_with_its_position(tmp_path, name, content, where):
    (tmp_path / name).write_text(content, encoding="utf-8")
    user_error(lambda: prepare_in(tmp_path, f"--input={name}", "--tokenizer=gpt2"), where,
               "tiktoken cannot encode the run of 1,500,000 whitespace characters at character")
