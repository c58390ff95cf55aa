"""train.py end to end, as a user runs it: training, checkpoints, resume, determinism, bad input."""

import json
import re
from dataclasses import asdict

import pytest
import torch

from conftest import ROOT, TINY, assert_clean_error, inside, parse_losses, run_ok, run_script, script_error, user_error
from model import GPTConfig
from smallgpt.checkpoint import check_memory, read_for_resuming
from smallgpt.configurator import configure
from smallgpt.dataset import open_dataset
from smallgpt.devices import resolve_device


def train(cwd, *args):
    result = run_script("train.py", *TINY, *args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def trained(finished_run):
    """The finished run's folder, data/shakespeare_char and a tiny model in out/, which the tests only read."""
    return finished_run[0]


@pytest.mark.slow
def test_loss_falls_and_the_checkpoint_is_self_contained(char_data):
    result = train(char_data, "--max_iters=60", "--eval_interval=20", "--log_interval=10")
    train_losses, val_losses = parse_losses(result.stdout)
    assert sorted(train_losses) == [0, 10, 20, 30, 40, 50]
    assert sorted(val_losses) == [0, 20, 40, 60]
    assert val_losses[60] < val_losses[0] - 0.8  # from ~ln(vocab) towards the unigram entropy and below
    assert "device cpu, dtype float32" in result.stdout
    # each logged step's time, and its MFU from the fifth step on (a moving average; -100% before it)
    timings = re.findall(r"^iter (\d+): loss [\d.]+, time ([\d.]+)ms, mfu (-?[\d.]+)%", result.stdout, re.M)
    assert [int(i) for i, _, _ in timings] == [0, 10, 20, 30, 40, 50] and all(float(t) > 0 for _, t, _ in timings)
    assert float(timings[0][2]) == -100 and all(0 < float(mfu) < 100 for _, _, mfu in timings[1:])
    checkpoint = torch.load(char_data / "out" / "ckpt.pt", weights_only=True)
    assert checkpoint["iter_num"] == 60
    assert checkpoint["model_args"]["n_layer"] == 2 and checkpoint["config"]["max_iters"] == 60
    assert checkpoint["tokenizer"]["tokenizer"] == "char"
    assert checkpoint["best_val_loss"] == pytest.approx(val_losses[60], abs=1e-4)
    assert not any(name.startswith("_orig_mod.") for name in checkpoint["model"])
    assert not list((char_data / "out").glob("*.tmp"))


@pytest.mark.slow
def test_same_seed_gives_the_same_losses_and_another_seed_does_not(char_data):
    args = ["--max_iters=20", "--eval_interval=10", "--log_interval=1", "--dropout=0.1"]
    first, second = parse_losses(train(char_data, *args).stdout), parse_losses(train(char_data, *args).stdout)
    assert first == second
    assert parse_losses(train(char_data, *args, "--seed=7").stdout)[0] != first[0]


@pytest.mark.slow
def test_resume_continues_exactly(char_data):
    args = ["--max_iters=30", "--lr_decay_iters=30", "--eval_interval=15", "--log_interval=1", "--dropout=0.1"]
    straight = parse_losses(train(char_data, *args, "--out_dir=straight").stdout)
    train(char_data, *args, "--out_dir=halves", "--max_iters=15")
    resumed = train(char_data, *args, "--out_dir=halves", "--init_from=resume")
    assert "resuming from halves/ckpt.pt at iter 15; changed: max_iters 15 -> 30" in resumed.stdout
    resumed_losses = parse_losses(resumed.stdout)
    assert sorted(resumed_losses[0]) == list(range(15, 30))
    assert all(resumed_losses[0][i] == straight[0][i] for i in range(15, 30))
    assert resumed_losses[1][30] == straight[1][30]


@pytest.mark.slow
def test_the_cpu_recipe_trains_and_resumes_exactly(char_data):
    """config/shakespeare_char_cpu.py, shortened: Muon, rotary embeddings and QK-norm, saved and resumed exactly."""
    args = [ROOT / "config" / "shakespeare_char_cpu.py", "--max_iters=20", "--lr_decay_iters=20", "--eval_interval=10",
            "--log_interval=1", "--eval_iters=2", "--batch_size=4", "--block_size=32", "--warmup_iters=2"]
    straight = run_script("train.py", *args, "--out_dir=straight", cwd=char_data)
    assert straight.returncode == 0, straight.stderr
    checkpoint = torch.load(char_data / "straight" / "ckpt.pt", weights_only=True)
    assert checkpoint["model_args"]["rotary"] and checkpoint["model_args"]["qk_norm"]
    assert "transformer.wpe.weight" not in checkpoint["model"]
    assert len(checkpoint["optimizer"]["state"]["transformer.h.0.attn.c_attn.weight"]) == 1  # Muon's momentum only
    straight = parse_losses(straight.stdout)
    assert sorted(straight[1]) == [10, 20]  # the recipe skips the evaluation before the first step
    assert straight[1][20] < straight[0][0] - 1.0
    halves = run_script("train.py", *args, "--out_dir=halves", "--max_iters=10", cwd=char_data)
    assert halves.returncode == 0, halves.stderr
    resumed = run_script("train.py", *args, "--out_dir=halves", "--init_from=resume", cwd=char_data)
    assert resumed.returncode == 0, resumed.stderr
    resumed = parse_losses(resumed.stdout)
    assert all(resumed[0][i] == straight[0][i] for i in range(10, 20)) and resumed[1][20] == straight[1][20]


@pytest.mark.slow
def test_a_resume_applies_the_optimizer_settings_it_reports_as_changed(char_data):
    train(char_data, "--max_iters=4", "--eval_interval=4", "--muon_learning_rate=0.02")
    result = train(char_data, "--max_iters=6", "--eval_interval=2", "--init_from=resume", "--muon_learning_rate=0.04",
                   "--weight_decay=0.0", "--beta2=0.9", "--muon_momentum=0.8")
    for change in ("muon_learning_rate 0.02 -> 0.04", "weight_decay 0.1 -> 0.0", "beta2 0.99 -> 0.9"):
        assert change in result.stdout
    decay, no_decay, muon = torch.load(char_data / "out" / "ckpt.pt", weights_only=True)["optimizer"]["param_groups"]
    assert decay["weight_decay"] == muon["weight_decay"] == 0.0 and decay["betas"] == (0.9, 0.9)
    assert muon["lr_scale"] == pytest.approx(0.04 / 1e-3) and muon["momentum"] == 0.8
    # AdamW and Muon keep different states: switching between them is refused
    assert_clean_error(run_script("train.py", *TINY, "--init_from=resume", cwd=char_data),
                       "muon_learning_rate 0.04 -> 0.0 would switch between AdamW and Muon")


@pytest.mark.slow
def test_a_warmup_as_long_as_the_decay_horizon_then_trains_at_min_lr(char_data):
    train(char_data, "--max_iters=4", "--eval_interval=4", "--log_interval=1", "--warmup_iters=2", "--lr_decay_iters=2")
    records = [json.loads(line) for line in open(char_data / "out" / "metrics.jsonl", encoding="utf-8")]
    lrs = [r["lr"] for r in records if r["kind"] == "iter"]
    assert lrs == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-4, 1e-4])


@pytest.mark.slow
def test_gradient_accumulation_matches_a_bigger_batch(char_data):
    """The global batch is drawn as one: 2 micro-batches of 8 are the same sequences as 1 of 16."""
    common = ["--max_iters=10", "--eval_interval=10", "--log_interval=1"]
    accumulated = parse_losses(train(char_data, *common, "--gradient_accumulation_steps=2").stdout)
    whole = parse_losses(train(char_data, *common, "--batch_size=16", "--out_dir=whole").stdout)
    for it in range(10):
        assert accumulated[0][it] == pytest.approx(whole[0][it], abs=2e-4)


@pytest.mark.slow
def test_eval_only_writes_nothing(char_data):
    result = train(char_data, "--eval_only=True")
    assert "step 0: train loss" in result.stdout and not parse_losses(result.stdout)[0]
    assert not (char_data / "out" / "ckpt.pt").exists()
    train(char_data, "--max_iters=4", "--eval_interval=4")
    saved = (char_data / "out" / "ckpt.pt").read_bytes()
    result = train(char_data, "--max_iters=4", "--init_from=resume", "--eval_only=True", "--eval_iters=9")
    assert "step 4: train loss" in result.stdout and not parse_losses(result.stdout)[0]
    result = train(char_data, "--init_from=resume", "--eval_only=True")  # iter 4 is no multiple of eval_interval
    assert "step 4: train loss" in result.stdout and not parse_losses(result.stdout)[0]
    assert (char_data / "out" / "ckpt.pt").read_bytes() == saved


@pytest.mark.slow
def test_eval_at_start_false_skips_the_first_evaluation_alone(char_data):
    common = ["--max_iters=6", "--eval_interval=3", "--log_interval=1"]
    default = parse_losses(train(char_data, *common).stdout)
    skipped = parse_losses(train(char_data, *common, "--eval_at_start=False", "--out_dir=skipped").stdout)
    assert sorted(default[1]) == [0, 3, 6] and sorted(skipped[1]) == [3, 6]
    assert skipped[0] == default[0] and skipped[1][6] == default[1][6]  # the same training, bit for bit


@pytest.mark.slow
def test_the_shakespeare_config_file_works_with_nanogpt_cpu_flags(char_data):
    result = run_script("train.py", ROOT / "config" / "shakespeare_char.py",
                        "--device=cpu", "--compile=False", "--eval_iters=2", "--log_interval=1", "--block_size=64",
                        "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", "--max_iters=3",
                        "--lr_decay_iters=2000", "--dropout=0.0", cwd=char_data)
    assert result.returncode == 0, result.stderr
    assert "iter 2: loss" in result.stdout and "step 3: train loss" in result.stdout


def corrupt_checkpoint(folder):
    (folder / "out").mkdir()
    (folder / "out" / "ckpt.pt").write_bytes(b"PK\x03\x04 truncated")


def test_bad_data_devices_and_checkpoints_are_refused(char_data):
    with inside(char_data):
        user_error(lambda: open_dataset("novel", block_size=32),
                   "dataset 'novel' is not prepared", "python prepare.py --input=YOUR_TEXT --dataset=novel")
        user_error(lambda: open_dataset("shakespeare_char", block_size=5000),
                   "block_size=5000 is too long", "val.bin", "4000 tokens")
        user_error(lambda: read_for_resuming("out/ckpt.pt", {}, {}, {}),
                   "cannot resume: no checkpoint at out/ckpt.pt")
    user_error(lambda: resolve_device("cuda"), "device 'cuda' is not available")
    user_error(lambda: resolve_device("tpu"), "unknown device 'tpu'")


@pytest.mark.parametrize("args, fragments", [
    (["--init_from=gpt3"], ["unknown init_from 'gpt3'"]),
    (["--n_embd=30", "--n_head=4"], ["n_embd (30) must be divisible by n_head (4)"]),
    (["--compile=maybe"], ["compile must be True or False"]),
    (["--rotary=True", "--n_embd=30", "--n_head=2"], ["the head size n_embd // n_head (15) must be even"]),
    (["--fsdp=True", "--muon_learning_rate=0.02"], ["fsdp=True cannot train with Muon"]),
    (["--n_layer=0", "--rotary=True"], ["n_layer=0, the bigram model, has no blocks for rotary to act on"]),
    (["--n_layer=0", "--qk_norm=True"], ["has no blocks for qk_norm to act on: leave qk_norm out"]),
    (["--n_layer=0", "--muon_learning_rate=0.02"], ["has no blocks for muon_learning_rate to act on"]),
    (["--n_layer=0", "--activation_checkpointing=True"], ["has no blocks for activation_checkpointing to act on"]),
    (["--n_layer=0", "--chunked_loss=True"], ["has no head for chunked_loss to split (its table's rows are the"]),
    (["--n_layer=0", "--dropout=0.1"], ["has no hidden states for dropout, which would zero logits at random"]),
])
def test_bad_settings_are_clean_errors(char_data, args, fragments):
    message = script_error("train.py", *TINY, "--max_iters=2", *args, cwd=char_data)
    assert all(fragment in message for fragment in fragments), message


@pytest.mark.slow
def test_the_bigram_takes_any_n_head_it_never_uses(char_data):
    assert "done: best val loss" in run_ok("train.py", *TINY, "--n_layer=0", "--n_head=3", "--max_iters=2",
                                           cwd=char_data)


def test_unprepared_default_dataset_names_the_prepare_command(tmp_path):
    with inside(tmp_path):
        user_error(lambda: open_dataset("shakespeare_char", block_size=64), "make it with: python prepare.py")


def test_corrupted_checkpoint_is_a_clean_error_and_stays(tmp_path):
    corrupt_checkpoint(tmp_path)
    with inside(tmp_path):
        user_error(lambda: read_for_resuming("out/ckpt.pt", {}, {}, {}), "cannot resume: ",
                   "not a readable checkpoint", "truncated or corrupted")
    assert (tmp_path / "out" / "ckpt.pt").read_bytes() == b"PK\x03\x04 truncated"


@pytest.mark.slow
@pytest.mark.parametrize("change, fragment", [("--n_layer=3", "n_layer=2 (asked 3)"),
                                              ("--activation=gelu_tanh", "activation='gelu' (asked 'gelu_tanh')"),
                                              ("--rotary=True", "rotary=False (asked True)")])
def test_resuming_with_another_model_is_refused(trained, change, fragment):
    key, _, value = change[2:].partition("=")
    checkpoint = torch.load(trained / "out" / "ckpt.pt", weights_only=True)
    model_args = {**checkpoint["model_args"], key: configure(checkpoint["model_args"], [change])[key]}
    with inside(trained):
        user_error(lambda: read_for_resuming("out/ckpt.pt", model_args, checkpoint["config"], checkpoint["tokenizer"]),
                   "cannot resume: the checkpoint's model differs", fragment)


@pytest.mark.slow
def test_train_py_refuses_to_resume_another_model(trained):
    assert_clean_error(run_script("train.py", *TINY, "--n_layer=3", "--init_from=resume", cwd=trained),
                       "cannot resume: the checkpoint's model differs: n_layer=2 (asked 3)")


@pytest.mark.slow
def test_a_checkpoint_from_before_the_architecture_options_resumes_as_gpt2(char_data):
    """
    Older checkpoints have no activation, rotary, ... in model_args: they were GPT-2's tanh GELU and nothing else.
    Nor do they hold the settings added since, which are not changes.
    """
    train(char_data, "--max_iters=2", "--eval_interval=2", "--activation=gelu_tanh")
    checkpoint = torch.load(char_data / "out" / "ckpt.pt", weights_only=True)
    for key in ("activation", "rotary", "qk_norm", "attn_scale"):
        del checkpoint["model_args"][key]
    for key in ("attn_scale", "eval_at_start"):
        del checkpoint["config"][key]
    torch.save(checkpoint, char_data / "out" / "ckpt.pt")
    assert_clean_error(run_script("train.py", *TINY, "--init_from=resume", cwd=char_data),
                       "activation='gelu_tanh' (asked 'gelu')")
    result = train(char_data, "--max_iters=4", "--eval_interval=2", "--init_from=resume", "--activation=gelu_tanh")
    assert "resuming from out/ckpt.pt at iter 2; changed: max_iters 2 -> 4\n" in result.stdout


def test_resuming_from_a_foreign_checkpoint_is_refused(tmp_path):
    (tmp_path / "out").mkdir()
    torch.save({"model": {}, "iter_num": 3}, tmp_path / "out" / "ckpt.pt")
    with inside(tmp_path):
        user_error(lambda: read_for_resuming("out/ckpt.pt", {}, {}, {}), "not written by this train.py")


@pytest.mark.slow
def test_the_bigram_model_learns_its_table_samples_and_resumes(char_data):
    bigram = [str(ROOT / "config" / "bigram.py"), "--device=cpu", "--lr_decay_iters=600", "--eval_interval=300",
              "--log_interval=50", "--eval_iters=20"]
    straight = train(char_data, *bigram, "--max_iters=600").stdout
    assert parse_losses(straight)[1][600] < 2.6  # the lecture's bigram: about 2.5
    checkpoint = torch.load(char_data / "out-bigram" / "ckpt.pt", weights_only=True)
    vocab_size = checkpoint["model_args"]["vocab_size"]
    assert {name: tuple(w.shape) for name, w in checkpoint["model"].items()} == {
        "transformer.wte.weight": (vocab_size, vocab_size)}  # a table of logits, and nothing else
    train(char_data, *bigram, "--max_iters=300", "--out_dir=stopped")
    resumed = train(char_data, *bigram, "--max_iters=600", "--out_dir=stopped", "--init_from=resume").stdout
    expected, got = parse_losses(straight), parse_losses(resumed)
    assert got[0] and all(got[0][it] == expected[0][it] for it in got[0]) and got[1][600] == expected[1][600]
    sample = run_script("sample.py", "--out_dir=out-bigram", "--device=cpu", "--num_samples=1", "--start=ROMEO:",
                        "--max_new_tokens=40", "--repetition_penalty=1.2", "--min_p=0.05", cwd=char_data)
    assert sample.returncode == 0 and sample.stdout.startswith("ROMEO:") and len(sample.stdout.split("\n---")[0]) == 46


@pytest.mark.parametrize("shape, advice", [(dict(n_layer=0, vocab_size=2_000_000), "the bigram's table is vocab_size x "
                                            "vocab_size (2,000,000 x 2,000,000): use a smaller vocabulary"),
                                           (dict(n_layer=100, n_embd=16384, n_head=128), "use a smaller model")])
def test_a_model_too_big_for_the_machine_is_refused_before_it_is_allocated(shape, advice):
    model_args = asdict(GPTConfig(block_size=8, **shape))
    user_error(lambda: check_memory(model_args, "cpu"), "needs", "GiB for its weights, gradients and AdamW state, "
               "more than this machine's", advice)
