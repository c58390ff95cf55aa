"""bench.py runs its parts and prints their figures (the figures themselves are for people, not for asserts)."""

import re
import shutil
from contextlib import nullcontext
from types import SimpleNamespace

import pytest
import torch

from conftest import assert_clean_error, needs_gpt2_bpe, run_ok, run_script
from model import GPT, GPTConfig
from smallgpt.bench_serve import sample_speed, serve_speed
from smallgpt.bench_speed import LOOP_SETTINGS, compare_penalties


def bench(cwd, *args):
    return run_ok("bench.py", "--device=cpu", *args, cwd=cwd)


@pytest.mark.slow
def test_train_part_compares_the_step_with_nanogpts_and_the_matrix_products(char_data):
    out = bench(char_data, "--part=train", "--rounds=2", "--steps_per_round=2")
    figures = {}
    for name in ("this repository", "nanoGPT's optimizer", "matrix products alone"):
        line = next(line for line in out.splitlines() if line.startswith(name))
        found = re.search(r"([\d.]+) ms/iter +([\d,]+) tokens/s +MFU +([\d.]+)%  \(peak ([\d,]+) GFLOP/s", line)
        ms, tokens_per_sec, mfu, peak = (float(group.replace(",", "")) for group in found.groups())
        assert ms > 0 and mfu > 0 and peak > 0, line
        assert tokens_per_sec == pytest.approx(12 * 64 / (ms / 1000), rel=0.01)  # batch 12 x block 64
        figures[name] = ms
    speedup = float(re.search(r"speedup over nanoGPT's step: ([\d.]+)x", out).group(1))
    # medians of the rounds, each side's own: near the ratio of the medians printed
    assert speedup == pytest.approx(figures["nanoGPT's optimizer"] / figures["this repository"], rel=0.05)


@pytest.mark.slow
@needs_gpt2_bpe
def test_prepare_part_writes_the_same_ids_as_nanogpts_way(char_data):
    shutil.copy(char_data / "text.txt", char_data / "data" / "shakespeare_char" / "input.txt")
    out = bench(char_data, "--part=prepare", "--char_megabytes=1", "--gpt2_megabytes=1")
    lines = [line for line in out.splitlines() if "MB/s" in line]
    assert [line.split()[0] for line in lines] == ["char", "gpt2", "bpe", "bpe", "gpt2"]
    assert all("same token ids: yes" in line for line in lines[:2])
    assert all("peak memory" in line and "learning from train" in line for line in lines[2:4])
    assert "MB of paragraphs, lines indented" in lines[4] and "peak memory" in lines[4]


@pytest.mark.slow
def test_sample_part_gets_the_same_tokens_with_and_without_the_cache(char_data):
    out = bench(char_data, "--part=sample")
    assert "recomputing (nanoGPT)" in out and "KV cache, as sample.py on CPU" in out
    assert "the same tokens from all three: yes" in out and "KV cache, all three penalties" in out
    assert re.search(r"memory reads [\d.]+ GB/s: .* sample.py's way reaches \d+% of it, nanoGPT's \d+%", out)
    assert "no out/ckpt.pt for the 2,000-token measurement" in out


@pytest.mark.slow
@needs_gpt2_bpe
def test_eval_part_scores_both_ways_alike_on_both_models(finished_run, tmp_path):
    shutil.copytree(finished_run[0], tmp_path / "run")
    shutil.copy(tmp_path / "run" / "text.txt", tmp_path / "run" / "data" / "shakespeare_char" / "input.txt")
    out = bench(tmp_path / "run", "--part=eval", "--eval_examples=8")
    assert out.count("the same acc and acc_norm both ways: yes") == 2  # GPT-2's vocabulary, then out/ckpt.pt
    flops = [float(f.replace(",", "")) for f in re.findall(r"([\d,.]+) MFLOP an example", out)]
    assert len(flops) == 4 and flops[1] < flops[0] / 2  # GPT-2's vocabulary: the head at the scored positions only
    assert re.search(r"build-nanogpt's way computes [\d.]+x eval.py's FLOPs", out)


MEASURE_COMPILE = """
import torch
from contextlib import nullcontext
from types import SimpleNamespace
from model import GPT, GPTConfig
from smallgpt.bench_compile import compile_eval
from smallgpt.hellaswag import hellaswag_share
from smallgpt.tokenizer import char_spec
spec = char_spec("abcdefgh ", "letters")
examples = [("abc abc abc", ["defg", "hhh", "a b c", "gg"], 0), ("ha ha", ["ha", "hah", "bed", "cab"], 1)]
torch.manual_seed(0)
model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=spec["vocab_size"])).eval()
for compiled in (False, True):
    print(*compile_eval(SimpleNamespace(autocast=nullcontext()), model, hellaswag_share(examples, spec), compiled))
print("hidden_states" in vars(model))
"""


@pytest.mark.slow
def test_the_compile_part_scores_alike_compiled_and_eager_and_leaves_the_model_eager(tmp_path):
    # in a fork: inductor's compile threads, once started in the test process, would hang the compiles of later forks
    (tmp_path / "measure.py").write_text(MEASURE_COMPILE)
    eager, compiled, kept = run_ok(tmp_path / "measure.py", cwd=tmp_path).splitlines()
    eager, compiled = ([float(figure) for figure in line.split()] for line in (eager, compiled))
    assert compiled[2] == eager[2] and min(eager + compiled) > 0  # the same acc_norm; both passes timed
    assert kept == "False"  # the compiled forward is gone with the measure


@pytest.mark.slow
def test_an_unknown_part_is_a_clean_error(tmp_path):
    assert_clean_error(run_script("bench.py", "--part=everything", cwd=tmp_path), "unknown part 'everything'")


def test_the_loop_measure_runs_each_setting_against_loops(capsys):
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=65, bias=False)).eval()
    codec = (lambda text: [ord(c) % 65 for c in text], lambda ids: "".join(chr(32 + i) for i in ids))
    compare_penalties(SimpleNamespace(device="cpu", device_type="cpu", seed=0), model, codec, num_samples=2, n_new=40)
    lines = [line for line in capsys.readouterr().out.splitlines() if "repeated lines" in line]
    assert [line.split()[0] for line in lines] == list(LOOP_SETTINGS)
    for line in lines:
        found = re.search(r"repeated lines +([\d.]+)%  repeated 4-grams +([\d.]+)% +([\d,.]+) tokens/s", line)
        assert found and 0 <= float(found.group(2)) <= 100 and float(found.group(3).replace(",", "")) > 0, line


@pytest.mark.slow
def test_the_serve_part_measures_sample_py_and_serve_py_on_one_checkpoint(finished_run):
    """The serve part's two measures on the finished run's tiny model: sample.py's loop in process, then serve.py
    streaming to 2 clients at once, every reply as long as asked (or the measure raises)."""
    ckpt_path = str(finished_run[0] / "out" / "ckpt.pt")
    opts = SimpleNamespace(device="cpu", dtype="float32", autocast=nullcontext())
    onednn = torch.backends.mkldnn.enabled
    assert sample_speed(opts, ckpt_path, "ROMEO:", 20, repeats=1) > 0
    assert torch.backends.mkldnn.enabled == onednn  # as it found it, for the parts after
    tokens_per_second, first_token_seconds = serve_speed(ckpt_path, "ROMEO:", 20, clients=2, rounds=1)
    assert tokens_per_second > 0 and 0 < first_token_seconds < 60
