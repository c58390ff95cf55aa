"""sample.py end to end: sampling from a trained out_dir alone, seeds, prompts from files, and bad input."""

import shutil

import pytest
import torch

from conftest import RunsCode, TINY, assert_clean_error, configure_as, inside, run_ok, run_script, user_error, with_char_data
from smallgpt.checkpoint import load_checkpoint
from smallgpt.files import read_text


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A folder with a tiny model trained on char data in out/, and the data folder moved away."""
    folder = with_char_data(tmp_path_factory.mktemp("trained"))
    result = run_script("train.py", *TINY, "--max_iters=30", "--eval_interval=30", cwd=folder)
    assert result.returncode == 0, result.stderr
    shutil.rmtree(folder / "data")  # sample.py needs out_dir alone
    return folder


def sample(folder, *args):
    return run_ok("sample.py", "--device=cpu", *args, cwd=folder)


@pytest.mark.slow
def test_samples_start_with_the_prompt_and_end_with_separators(trained):
    out = sample(trained, "--start=ROMEO:", "--num_samples=3", "--max_new_tokens=50")
    samples = out.split("---------------\n")
    assert samples[-1] == "" and len(samples) == 4
    for text in samples[:3]:
        assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 50 + 1  # + print's newline


@pytest.mark.slow
def test_same_seed_same_text_other_seed_other_text(trained):
    args = ["--start=ROMEO:", "--num_samples=1", "--max_new_tokens=100"]
    assert sample(trained, *args) == sample(trained, *args)
    assert sample(trained, *args, "--seed=1") != sample(trained, *args)


@pytest.mark.slow
def test_prompt_from_a_file_and_sampling_options(trained):
    (trained / "prompt.txt").write_text("JULIET:\nO", encoding="utf-8")
    out = sample(trained, "--start=FILE:prompt.txt", "--num_samples=1", "--max_new_tokens=20", "--top_p=0.9",
                 "--top_k=0", "--temperature=1.3")
    assert out.startswith("JULIET:\nO")
    greedy = sample(trained, "--start=A", "--num_samples=2", "--max_new_tokens=30", "--top_k=1")
    first, second, _ = greedy.split("---------------\n")
    assert first == second  # top_k=1 is greedy: nothing left to chance


@pytest.mark.slow
@pytest.mark.parametrize("args, fragments", [
    (["--start=ROMEO: ~ä"], ["characters not in the vocabulary", "~ä"]),
    (["--start="], ["the prompt is empty"]),
    (["--init_from=gpt9"], ["unknown init_from 'gpt9'"]),
])
def test_bad_input_is_a_clean_error(trained, args, fragments):
    assert_clean_error(run_script("sample.py", "--device=cpu", *args, cwd=trained), *fragments)


@pytest.mark.parametrize("args, fragments", [
    (["--max_new_tokens=-5"], ["max_new_tokens must be 0 or more"]),
    (["--temperature=0"], ["temperature must be above 0"]),
    (["--top_p=0"], ["top_p must be in (0, 1]"]),
    (["--num_sample=3"], ["unknown key 'num_sample'", "did you mean 'num_samples'"]),
])
def test_bad_settings_are_refused(args, fragments):
    user_error(lambda: configure_as("sample.py", args), *fragments)


def test_missing_prompt_files_and_checkpoints_are_refused(tmp_path):
    with inside(tmp_path):
        user_error(lambda: read_text("nowhere.txt", "prompt file"), "prompt file 'nowhere.txt' not found")
        user_error(lambda: load_checkpoint("empty/ckpt.pt"), "no checkpoint at empty/ckpt.pt")


def test_corrupted_checkpoint_is_a_clean_error(tmp_path):
    (tmp_path / "ckpt.pt").write_bytes(b"\x80\x02not really a checkpoint")
    user_error(lambda: load_checkpoint(str(tmp_path / "ckpt.pt")), "not a readable checkpoint")


def test_a_checkpoint_that_runs_code_is_never_unpickled(tmp_path):
    torch.save({"model": RunsCode(), "model_args": {}, "tokenizer": {}}, tmp_path / "ckpt.pt")
    with inside(tmp_path):
        user_error(lambda: load_checkpoint("ckpt.pt"), "not a readable checkpoint")
    assert not (tmp_path / "pwned").exists()


def test_a_foreign_checkpoint_is_a_clean_error(tmp_path):
    torch.save({"model": {}}, tmp_path / "ckpt.pt")
    user_error(lambda: load_checkpoint(str(tmp_path / "ckpt.pt")), "not written by this train.py")
