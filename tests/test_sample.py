"""sample.py end to end: sampling from a trained out_dir alone, seeds, prompts from files, streamed samples, and bad
input."""

import os
import shutil
import signal

import pytest
import torch
import torch.nn.functional as F

from conftest import (ROOT, RunsCode, TINY, finish_fork, inside, needs_gpt2_bpe, prepare_in, run_ok, run_script,
                      sample_text, script_error, start_fork, user_error)
from smallgpt.checkpoint import load_checkpoint
from model import GPT, GPTConfig
from smallgpt.files import read_text
from smallgpt.devices import mixed_precision
from smallgpt.sampling import Penalties, next_token_probs, repeated_shares, sample_next


@pytest.fixture(scope="module")
def trained(finished_run, tmp_path_factory):
    """A folder with the finished run's tiny model in out/, and no data folder: sample.py needs out_dir alone."""
    folder = tmp_path_factory.mktemp("trained")
    shutil.copytree(finished_run[0] / "out", folder / "out")
    return folder


def sample(folder, *args):
    return run_ok("sample.py", "--device=cpu", *args, cwd=folder)


@pytest.mark.slow
@pytest.mark.parametrize("samples, tokens, ending, status", [(1, 100_000, "reader gone", 141),
                                                             (30, 3000, "reader gone", 141),  # more than a pipe holds
                                                             (1, 100_000, "Ctrl-C", 130)])
def test_sample_py_ends_quietly_in_a_pipe_whose_reader_goes_and_on_ctrl_c(trained, samples, tokens, ending, status):
    """As `python sample.py | head -c 10` and Ctrl-C: no traceback, no word, the status a shell would show."""
    read_end, write_end = os.pipe()
    argv = [str(ROOT / "sample.py"), f"--num_samples={samples}", f"--max_new_tokens={tokens}", "--device=cpu"]
    pid, out, err = start_fork(argv, trained, preexec=lambda: (os.dup2(write_end, 1), os.close(read_end)))
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        assert reader.read(10)  # it samples, and then its reader goes
        if ending == "Ctrl-C":
            os.kill(pid, signal.SIGINT)
            reader.read()  # to its end: the pipe never fills
    result = finish_fork(argv, pid, out, err)
    assert result.returncode == status and result.stderr == "", result.stderr


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
def test_sample_py_in_float16_and_bfloat16(trained):
    """A temperature too small for float16's logits samples greedily; bfloat16 takes every setting at once."""
    args = ["--start=ROMEO:", "--num_samples=1", "--max_new_tokens=40", "--dtype=float16"]
    greedy = sample(trained, *args, "--top_k=1")
    assert sample(trained, *args, "--temperature=1e-5") == greedy
    assert greedy.split("---")[0][len("ROMEO:"):].replace("\n", "")  # not token 0, the newline, alone
    out = sample(trained, "--start=ROMEO:", "--num_samples=2", "--max_new_tokens=40", "--dtype=bfloat16", "--top_k=20",
                 "--top_p=0.9", "--min_p=0.05", "--temperature=0.9", "--repetition_penalty=1.3",
                 "--frequency_penalty=0.1", "--presence_penalty=0.2")
    samples = out.split("---------------\n")
    assert len(samples) == 3 and all(text.startswith("ROMEO:") and len(text) == 47 for text in samples[:2])


@pytest.mark.slow
@pytest.mark.parametrize("args, fragments", [
    (["--start=ROMEO: ~ä"], ["characters not in the vocabulary", "~ä"]),
    (["--start="], ["the prompt is empty"]),
    (["--init_from=gpt9"], ["unknown init_from 'gpt9'"]),
])
def test_bad_input_is_a_clean_error(trained, args, fragments):
    message = script_error("sample.py", "--device=cpu", *args, cwd=trained)
    assert all(fragment in message for fragment in fragments), message


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


# -----------------------------------------------------------------------------
# a single sample is printed as it is generated

def first_sample(folder, *args):
    """The text of the first sample sample.py prints (one sample is streamed, several are not)."""
    result = run_script("sample.py", "--device=cpu", "--max_new_tokens=60", *args, cwd=folder)
    assert result.returncode == 0, result.stderr
    return result.stdout.split("---------------\n")[0]


@pytest.mark.slow
def test_a_single_sample_streams_the_same_text(finished_run):
    char_data = finished_run[0]  # sampling reads out/ckpt.pt and writes nothing
    streamed = first_sample(char_data, "--num_samples=1", "--start=ROMEO:")
    assert streamed.startswith("ROMEO:") and streamed == first_sample(char_data, "--num_samples=2", "--start=ROMEO:")


@pytest.mark.slow
@needs_gpt2_bpe
def test_gpt2_text_streams_whole_characters(tmp_path):
    text = sample_text(20_000) + "Ça va? Très bien, naïve café — 東京 🙂\n" * 50
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    prepare_in(tmp_path, "--input=t.txt", "--tokenizer=gpt2", "--dataset=bpe")
    result = run_script("train.py", *TINY, "--dataset=bpe", "--max_iters=4", "--eval_interval=4", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for seed in range(3):
        streamed = first_sample(tmp_path, "--num_samples=1", f"--seed={seed}", "--start=東京 🙂", "--temperature=1.5")
        assert streamed.startswith("東京 🙂")
        whole = first_sample(tmp_path, "--num_samples=2", f"--seed={seed}", "--start=東京 🙂", "--temperature=1.5")
        assert streamed == whole


# -----------------------------------------------------------------------------
# sampling against loops: penalties, min-p, and the measure of repetition

def test_the_penalties_change_the_logits_as_their_definitions_say():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    context = torch.tensor([[0, 1, 1]])  # token 0 once, token 1 twice, 2 and 3 never
    penalties = Penalties(repetition=2.0)
    penalties.restart(context, 4)
    assert torch.equal(penalties(logits), torch.tensor([[1.0, -2.0, 0.5, 3.0]]))  # divided where positive
    penalties = Penalties(frequency=0.5, presence=0.25)
    penalties.restart(context, 4)
    assert torch.equal(penalties(logits), torch.tensor([[2.0 - 0.5 - 0.25, -1.0 - 1.0 - 0.25, 0.5, 3.0]]))
    penalties.add(torch.tensor([[3]]))  # a drawn token counts from then on
    assert penalties(logits)[0, 3].item() == 3.0 - 0.5 - 0.25
    assert not Penalties() and Penalties(presence=0.1)  # off unless one of them is set


def test_min_p_keeps_exactly_the_tokens_as_likely_as_min_p_times_the_top_one():
    probs = torch.tensor([0.5, 0.26, 0.24, 0.0, 0.0])  # min_p=0.5: 0.26 stays, 0.24 goes
    logits = torch.log(probs + 1e-30)[None].repeat(2000, 1)
    drawn = set(sample_next(logits, min_p=0.5).flatten().tolist())
    assert drawn == {0, 1}
    assert set(sample_next(logits, min_p=0.0).flatten().tolist()) == {0, 1, 2}
    assert set(sample_next(logits, min_p=1.0).flatten().tolist()) == {0}


def looping_model():
    """A tiny model trained on one line repeated, which it then repeats when it samples."""
    torch.manual_seed(0)
    line = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7])
    data = line.repeat(20)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=10, bias=False))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(150):
        starts = torch.randint(len(data) - 17, (16,))
        windows = torch.stack([data[s:s + 17] for s in starts])
        _, loss = model(windows[:, :-1].contiguous(), windows[:, 1:].contiguous())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return model.eval()


def test_defaults_sample_as_before_and_a_penalty_makes_a_looping_model_repeat_less():
    model = looping_model()
    prompt = torch.tensor([[3, 1, 4]])

    def draw(**options):
        torch.manual_seed(1)
        return model.generate(prompt, 60, **options)[0].tolist()

    plain = draw()
    assert plain == draw(min_p=0.0, penalties=Penalties())  # the defaults: the same tokens
    looped = repeated_shares([], [plain])[1]
    penalised = repeated_shares([], [draw(penalties=Penalties(repetition=3.0, presence=1.0))])[1]
    assert looped > 0.7 and penalised < looped - 0.2, (looped, penalised)


def test_the_repetition_measure_counts_repeated_lines_and_four_grams():
    text = "a line that is long enough\nshort\na line that is long enough\nanother line, long enough too\n"
    lines, grams = repeated_shares([text, "one line that is long enough alone"], [[1, 2, 3, 4, 1, 2, 3, 4], [5, 6]])
    assert lines == pytest.approx(1 / 4)  # 4 lines of 20 characters or more, one of them seen before
    assert grams == pytest.approx(1 / 5)  # 5 4-grams in the first sample, the last one seen before


# -----------------------------------------------------------------------------
# sampling in bfloat16 and float16, as on a GPU: the model's logits come rounded, all that follows them is float32

SETTINGS = [dict(temperature=0.7), dict(top_k=3), dict(top_p=0.8), dict(min_p=0.2), dict(temperature=1e-30),
            dict(temperature=1e30, top_k=5, top_p=0.5, min_p=0.1)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("settings", SETTINGS)
def test_sampling_computes_in_float32_whatever_the_logits_dtype(dtype, settings):
    torch.manual_seed(0)
    logits = (torch.randn(8, 65) * 4).to(dtype)  # (B, vocab_size), as the model gives them under autocast
    probs, candidates = next_token_probs(logits, **settings)
    expected, expected_candidates = next_token_probs(logits.float(), **settings)
    assert probs.dtype == torch.float32 and torch.equal(probs, expected)
    assert candidates is expected_candidates is None or torch.equal(candidates, expected_candidates)
    assert torch.isfinite(probs).all() and (probs.sum(-1) > 0).all()  # min_p leaves them unnormalized


@pytest.mark.parametrize("dtype, temperature", [(torch.float16, 1e-5), (torch.bfloat16, 1e-30), (torch.float32, 1e-39),
                                                (torch.float32, 1e-45)])
def test_a_temperature_too_small_for_the_logits_draws_the_most_likely_token(dtype, temperature):
    """logits / temperature would overflow: every probability NaN, and token 0 drawn whatever the logits."""
    torch.manual_seed(0)
    logits = (torch.randn(16, 65) * 4).to(dtype)
    for settings in [{}, dict(top_k=5), dict(top_p=0.9, min_p=0.1)]:
        drawn = sample_next(logits, temperature, **settings)
        assert torch.equal(drawn[:, 0], logits.float().argmax(-1)), settings


@pytest.mark.parametrize("repetition, frequency, presence", [(1e-300, 0.0, 0.0), (1e300, 0.0, 0.0), (1.0, 1e308, 0.0),
                                                             (1.0, -1e308, 0.0), (1.0, 0.0, 1e39), (1.5, 0.0, -1e39)])
def test_no_penalty_the_ranges_accept_turns_sampling_into_nan(repetition, frequency, presence):
    torch.manual_seed(0)
    penalties = Penalties(repetition, frequency, presence)
    logits = (torch.randn(4, 65) * 4).to(torch.float16)
    # two rows that have seen every token, two some of them
    penalties.restart(torch.cat([torch.arange(65)[None].repeat(2, 1), torch.randint(65, (2, 65))]), 65)
    for temperature in (1e-30, 0.8, 1e30):
        probs, _ = next_token_probs(penalties(logits), temperature, top_p=0.9, min_p=0.1)
        assert torch.isfinite(probs).all() and (probs.sum(-1) > 0).all()


@pytest.mark.parametrize("dtype, units", [("bfloat16", 2**-8), ("float16", 2**-11)])
def test_generation_under_autocast_draws_from_float32s_distribution(dtype, units):
    """
    The next-token distribution at every position of a sequence, under autocast and in float32: their total
    variation distance stays within 4 units of the precision's roundoff times the largest logit (autocast rounds the
    logits, and the activations before them, by about a unit each, and a softmax moves by no more than its logits
    do). Every setting draws valid tokens.
    """
    model = looping_model()
    idx = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 3, 1]])
    autocast = mixed_precision("cpu", dtype)
    with torch.no_grad():
        expected = F.softmax(model(idx, idx)[0][0].float(), dim=-1)  # (T, vocab_size), float32
        with autocast:
            logits = model(idx, idx)[0][0]
        assert logits.dtype == getattr(torch, dtype)
        distance = (F.softmax(logits.float(), dim=-1) - expected).abs().sum(-1).max() / 2
        assert distance <= 4 * units * logits.float().abs().max(), distance
        for settings in SETTINGS + [dict(penalties=Penalties(1.3, 0.1, 0.5))]:
            torch.manual_seed(1)
            with autocast:
                tokens = model.generate(idx[:, :3], 40, **settings)
            assert tokens.shape == (1, 43) and 0 <= tokens.min() and tokens.max() < 10, settings
