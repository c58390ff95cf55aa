"""
Training in less memory and finetuning with LoRA: activation checkpointing and the chunked loss give plain
training's losses and gradients; LoRA trains its adapters alone, merges into the same logits, resumes exactly,
and its checkpoints are read by sample.py, eval.py and export.py; bad input; bench.py's memory part.
"""

import copy
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import (FINISHED_RUN, ROOT, TINY, assert_clean_error, inside, needs_gpt2_bpe, parse_losses,
                      prepare_in, run_ok, run_script, sample_text, script_error, user_error)
from model import GPT, GPTConfig
from smallgpt.checkpoint import load_checkpoint, record_base
from smallgpt.chunked_loss import chunked_cross_entropy
from smallgpt.lora import add_adapters, merge_adapters, parse_targets, weights_checksum

ALL_TARGETS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def tiny(**options):
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=65, bias=False, **options))


def loss_and_gradients(model, x, y, seed=5):
    torch.manual_seed(seed)  # the dropout masks
    _, loss = model(x, y)
    loss.backward()
    return loss.item(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("options", [dict(dropout=0.1), dict(dropout=0.1, rotary=True, qk_norm=True, attn_scale=1.5)])
@pytest.mark.parametrize("checkpointing, chunked", [(True, False), (False, True), (True, True)])
def test_checkpointed_and_chunked_training_give_plain_trainings_loss_and_gradients(options, checkpointing, chunked):
    plain = tiny(**options)
    x, y = torch.randint(65, (4, 16)), torch.randint(65, (4, 16))
    y[0, :5] = -1  # ignored targets, as the harness's padding
    expected_loss, expected = loss_and_gradients(plain, x, y)
    model = copy.deepcopy(tiny(**options))
    model.activation_checkpointing, model.chunked_loss = checkpointing, chunked
    loss, gradients = loss_and_gradients(model, x, y)
    assert loss == pytest.approx(expected_loss, abs=1e-6)  # the same dropout masks in the recomputation too
    assert gradients.keys() == expected.keys()
    for name, gradient in gradients.items():
        assert torch.allclose(gradient, expected[name], atol=1e-6), name


def test_the_chunked_loss_gives_each_tokens_loss_and_never_the_whole_logits(monkeypatch):
    import smallgpt.chunked_loss as chunked_loss
    monkeypatch.setattr(chunked_loss, "CHUNK_LOGITS", 65 * 10)  # 10 tokens a chunk: 64 tokens in 7 chunks
    torch.manual_seed(0)
    x = (torch.randn(64, 32) * 0.3).requires_grad_()
    weight, targets = (torch.randn(65, 32) * 0.3).requires_grad_(), torch.randint(65, (64,))
    targets[3] = -1
    plain = F.cross_entropy(x @ weight.t(), targets, ignore_index=-1, reduction="none")
    with torch.no_grad():
        assert torch.allclose(chunked_cross_entropy(x, weight, targets, "none"), plain, atol=1e-6)
    loss = chunked_cross_entropy(x, weight, targets)
    grad_x, grad_weight = torch.autograd.grad(loss, (x, weight))
    expected = torch.autograd.grad(F.cross_entropy(x @ weight.t(), targets, ignore_index=-1), (x, weight))
    assert loss.item() == pytest.approx(plain[targets != -1].mean().item(), abs=1e-6)
    assert torch.allclose(grad_x, expected[0], atol=1e-6) and torch.allclose(grad_weight, expected[1], atol=1e-6)


def test_evaluations_token_losses_are_the_same_with_the_chunked_loss():
    model = tiny().eval()
    x, y = torch.randint(65, (3, 16)), torch.randint(65, (3, 16))
    with torch.no_grad():
        _, plain = model(x, y, loss_reduction="none")
        model.chunked_loss = True
        logits, chunked = model(x, y, loss_reduction="none")
    assert logits is None and torch.equal(chunked, plain)


# -----------------------------------------------------------------------------
# LoRA, in process

@pytest.mark.parametrize("options", [{}, dict(rotary=True, qk_norm=True, attn_scale=1.5)])
def test_only_the_adapters_train_and_the_merged_model_computes_base_plus_adapters(options):
    model = tiny(dropout=0.0, **options)
    base = {name: p.detach().clone() for name, p in model.named_parameters()}
    add_adapters(model, rank=4, alpha=8.0, dropout=0.0, targets=ALL_TARGETS)
    trainable = sorted(name for name, p in model.named_parameters() if p.requires_grad)
    assert trainable == sorted(f"transformer.h.{layer}.{target}.{part}" for layer in range(2) for target in ALL_TARGETS
                               for part in ("lora_A", "lora_B"))
    x = torch.randint(65, (2, 16))
    assert torch.equal(model(x, x)[0], tiny(dropout=0.0, **options)(x, x)[0])  # B starts at zero: the base exactly
    optimizer = model.configure_optimizers(0.0, 1e-2, (0.9, 0.99), "cpu")
    for _ in range(3):
        _, loss = model(x, x)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    assert len(optimizer.state) == len(trainable)  # no optimizer state for the frozen weights
    for name, p in model.named_parameters():
        if name in base:
            assert torch.equal(p, base[name]), name
    model.eval()
    with torch.no_grad():
        with_adapters = model(x, x)[0]
        merged = merge_adapters(copy.deepcopy(model))
        assert not any("lora" in name for name, _ in merged.named_parameters())
        assert torch.allclose(merged(x, x)[0], with_adapters, atol=1e-5)
        assert not torch.allclose(with_adapters, tiny(dropout=0.0, **options).eval()(x, x)[0], atol=1e-4)  # learned


def test_the_checksum_knows_a_base_again_and_its_adapters_never():
    model = tiny()
    checksum = weights_checksum(model)
    add_adapters(model, 2, 4.0, 0.0, ("attn.c_attn",))
    assert weights_checksum(model) == checksum
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight[0, 0] += 1e-3
    assert weights_checksum(model) != checksum


def test_bad_lora_settings_are_refused():
    user_error(lambda: parse_targets("attn.c_atn"), "unknown lora_targets 'attn.c_atn': did you mean 'attn.c_attn'?")
    user_error(lambda: parse_targets(" ,"), "lora_targets names no matrix")
    user_error(lambda: add_adapters(tiny(), 33, 16.0, 0.0, ("attn.c_proj",)),
               "lora_rank=33 is above the size of attn.c_proj (32 x 32): use at most 32")
    assert parse_targets("mlp.c_fc, attn.c_attn,mlp.c_fc") == ("mlp.c_fc", "attn.c_attn")
    bigram = GPT(GPTConfig(n_layer=0, block_size=16, vocab_size=65))
    user_error(lambda: add_adapters(bigram, 4, 16.0, 0.0, ALL_TARGETS), "the model has no blocks for adapters")


# -----------------------------------------------------------------------------
# the scripts: finetuning a checkpoint with LoRA, resuming, sampling, evaluating, exporting

# with both memory settings: the resume test checks that they resume exactly too
LORA = ["--lora_rank=4", "--lora_dropout=0.1", "--dropout=0.1", "--learning_rate=1e-2", "--eval_interval=5",
        "--log_interval=1", "--always_save_checkpoint=True", "--activation_checkpointing=True", "--chunked_loss=True"]


@pytest.fixture(scope="module")
def finetuned(finished_run, tmp_path_factory):
    """A folder with the finished run's model as base/ckpt.pt, and LoRA finetunings of it for 10 steps in out/,
    and for 5 steps in stopped/ (to resume)."""
    folder = tmp_path_factory.mktemp("lora")
    (folder / "data").symlink_to(finished_run[0] / "data")
    shutil.copytree(finished_run[0] / "out", folder / "base")
    straight = run_ok("train.py", *TINY, *LORA, "--init_from=base/ckpt.pt", "--max_iters=10", cwd=folder)
    run_ok("train.py", *TINY, *LORA, "--init_from=base/ckpt.pt", "--max_iters=5", "--out_dir=stopped", cwd=folder)
    return folder, straight


@pytest.mark.slow
def test_a_lora_checkpoint_holds_the_adapters_and_a_reference_to_its_base(finetuned):
    folder, straight = finetuned
    assert "; LoRA: 4,096 of them train, with AdamW alone" in straight
    checkpoint = torch.load(folder / "out" / "ckpt.pt", weights_only=True)
    assert all("lora_" in name for name in checkpoint["model"]) and len(checkpoint["model"]) == 16
    base = torch.load(folder / "base" / "ckpt.pt", weights_only=True)
    assert checkpoint["lora"]["base"] == str(folder / "base" / "ckpt.pt")  # where it is, however it was typed
    assert checkpoint["lora"]["base_from_checkpoint"] == os.path.join("..", "base", "ckpt.pt")
    assert checkpoint["model_args"] == {**base["model_args"], "dropout": 0.1}  # the base's shape, this run's dropout
    assert checkpoint["lora"]["checksum"] == weights_checksum(load_checkpoint(str(folder / "base" / "ckpt.pt"))[0])
    assert os.path.getsize(folder / "out" / "ckpt.pt") < 0.3 * os.path.getsize(folder / "base" / "ckpt.pt")
    _, val = parse_losses(straight)
    assert val[0] == pytest.approx(parse_losses(run_ok("train.py", *FINISHED_RUN, "--eval_only=True",
                                                       "--init_from=base/ckpt.pt", cwd=folder))[1][0])


@pytest.mark.slow
def test_a_lora_run_resumes_exactly(finetuned):
    folder, straight = finetuned
    resumed = run_ok("train.py", *TINY, *LORA, "--init_from=resume", "--out_dir=stopped", "--max_iters=10",
                     cwd=folder)
    expected, got = parse_losses(straight)[0], parse_losses(resumed)[0]
    assert sorted(got) == list(range(5, 10)) and all(got[i] == expected[i] for i in got)


@pytest.mark.slow
def test_sample_and_eval_read_the_base_with_its_adapters(finetuned):
    folder, _ = finetuned
    with inside(folder):  # where the base's path, base/ckpt.pt, leads
        model, _ = load_checkpoint("out/ckpt.pt")  # the base with the adapters merged in
    assert not any("lora" in name for name in model.state_dict())
    sample = lambda out_dir: run_ok("sample.py", "--device=cpu", "--num_samples=2", "--max_new_tokens=40",
                                    f"--out_dir={out_dir}", cwd=folder)
    finetuned_text = sample("out")
    assert finetuned_text.count("---------------") == 2 and finetuned_text != sample("base")  # the adapters at work
    rows = ROOT / "tests" / "data" / "hellaswag_rows.jsonl"
    result = run_ok("eval.py", "--tasks=hellaswag", f"--hellaswag_file={rows}", cwd=folder)
    assert "hellaswag: acc " in result and "(8 examples)" in result


@pytest.mark.slow
@needs_gpt2_bpe
def test_lora_from_a_hugging_face_folder_exports_merged_weights_that_transformers_loads(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    base = tmp_path / "tiny-gpt2"
    transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64)
                                 ).save_pretrained(base)
    (tmp_path / "text.txt").write_text(sample_text(20_000), encoding="utf-8")
    prepare_in(tmp_path, "--input=text.txt", "--tokenizer=gpt2", "--dataset=shakespeare")
    # trained in bfloat16, as on a GPU: the adapters are float32, as every weight, and so are the exported weights
    trained = run_ok("train.py", "--dataset=shakespeare", f"--init_from={base}", "--lora_rank=4", "--max_iters=4",
                     "--learning_rate=1e-2", "--eval_interval=4", "--eval_iters=2", "--batch_size=4", "--block_size=32",
                     "--device=cpu", "--dtype=bfloat16", cwd=tmp_path)
    assert f"initializing from {base}" in trained and "of them train, with AdamW alone" in trained
    model, _ = load_checkpoint(str(tmp_path / "out" / "ckpt.pt"))
    run_ok("export.py", cwd=tmp_path)
    exported = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out" / "hf").eval()
    idx = torch.randint(50257, (2, 16))
    with torch.no_grad():
        assert torch.allclose(exported(idx).logits, model.eval()(idx, idx)[0], atol=1e-5)
        assert not torch.allclose(exported(idx).logits, transformers.GPT2LMHeadModel.from_pretrained(base).eval()(
            idx).logits, atol=1e-4)  # the adapters learned something, and it is in the exported weights


@pytest.mark.slow
def test_a_changed_or_missing_base_is_refused_in_one_line(finetuned, tmp_path):
    folder, _ = finetuned
    work = tmp_path / "work"
    shutil.copytree(folder, work, symlinks=True)
    checkpoint = torch.load(work / "base" / "ckpt.pt", weights_only=True)
    checkpoint["model"]["transformer.h.0.mlp.c_fc.weight"][0, 0] += 1e-3
    torch.save(checkpoint, work / "base" / "ckpt.pt")
    before = (work / "out" / "ckpt.pt").read_bytes()
    assert_clean_error(run_script("sample.py", "--device=cpu", cwd=work), "out/ckpt.pt holds LoRA adapters for "
                       "base/ckpt.pt, whose weights are not those they were trained on", "put back the base it was")
    message = script_error("train.py", *TINY, *LORA, "--init_from=resume", "--max_iters=12", cwd=work)
    assert "whose weights are not those they were trained on" in message
    (work / "base" / "ckpt.pt").unlink()  # the copy's base gone: the base where it was recorded, the original
    assert "hellaswag: acc " in run_ok("eval.py", "--tasks=hellaswag", "--hellaswag_file=" + str(
        ROOT / "tests" / "data" / "hellaswag_rows.jsonl"), cwd=work)
    assert (work / "out" / "ckpt.pt").read_bytes() == before


@pytest.mark.slow
def test_a_moved_base_is_named_and_can_be_pointed_at(finetuned, tmp_path):
    folder, _ = finetuned
    sample = lambda out_dir: run_script("sample.py", "--device=cpu", "--num_samples=1", "--max_new_tokens=10",
                                        f"--out_dir={out_dir}", cwd=tmp_path)
    assert sample(folder / "out").returncode == 0  # from another folder: the base's path is recorded whole
    notes, moved = tmp_path / "notes", tmp_path / "moved"
    shutil.copytree(folder / "out", notes)
    shutil.copytree(folder / "base", moved)
    checkpoint = torch.load(notes / "ckpt.pt", weights_only=True)
    checkpoint["lora"]["base"] = str(tmp_path / "gone" / "ckpt.pt")  # as if the base had been moved since
    torch.save(checkpoint, notes / "ckpt.pt")
    assert_clean_error(sample(notes), f"holds LoRA adapters for {tmp_path / 'gone' / 'ckpt.pt'}, which is not there",
                       "put it back, or record where it is now with python -m smallgpt.checkpoint")
    user_error(lambda: record_base(str(notes / "ckpt.pt"), str(folder / "out" / "ckpt.pt")),  # not its base
               "whose weights are not those they were trained on")
    result = subprocess.run([sys.executable, "-m", "smallgpt.checkpoint", str(notes / "ckpt.pt"),
                             f"--base={moved / 'ckpt.pt'}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and f"its base is {moved / 'ckpt.pt'}" in result.stdout, result.stderr
    assert sample(notes).returncode == 0


@pytest.mark.slow
def test_a_run_never_writes_over_the_weights_it_starts_from(finetuned, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(finetuned[0], work, symlinks=True)
    before = (work / "base" / "ckpt.pt").read_bytes()
    for out_dir in ("base", "./base", str(work / "base")):
        message = script_error("train.py", *TINY, "--init_from=base/ckpt.pt", "--lora_rank=2", "--max_iters=2",
                               f"--out_dir={out_dir}", cwd=work)
        assert "would write" in message and "over the weights it starts from (base/ckpt.pt): choose another" in message
    message = script_error("train.py", *TINY, "--init_from=out/ckpt.pt", "--max_iters=2", "--out_dir=base", cwd=work)
    assert "over the weights it starts from (out/ckpt.pt and its bases)" in message  # a LoRA checkpoint's base
    assert (work / "base" / "ckpt.pt").read_bytes() == before
    checkpoint = torch.load(work / "out" / "ckpt.pt", weights_only=True)  # bases in a loop, as a run could leave
    checkpoint["lora"].update(base=str(work / "out" / "ckpt.pt"), base_from_checkpoint="ckpt.pt")
    torch.save(checkpoint, work / "out" / "ckpt.pt")
    for message in (script_error("sample.py", "--device=cpu", cwd=work),
                    script_error("train.py", *TINY, *LORA, "--init_from=resume", "--max_iters=12", cwd=work)):
        assert "whose base is" in message and "in a loop" in message and len(message) < 500, message


def test_lora_needs_a_model_to_start_from(finished_run):
    folder = finished_run[0]
    message = script_error("train.py", *TINY, "--lora_rank=4", "--max_iters=1", "--out_dir=never", cwd=folder)
    assert "lora_rank=4 finetunes a trained model: start from one with --init_from=gpt2" in message
    message = script_error("train.py", *FINISHED_RUN, "--lora_rank=4", "--init_from=resume", cwd=folder)
    assert "a run resumes as it was trained: to finetune its weights with LoRA, start a new run" in message
    message = script_error("train.py", *TINY, "--lora_rank=4", "--lora_targets=mlp.fc", "--max_iters=1",
                           "--init_from=out/ckpt.pt", "--out_dir=never", cwd=folder)
    assert "unknown lora_targets 'mlp.fc': did you mean 'mlp.c_fc'?" in message
    assert not (folder / "never").exists() or not list((folder / "never").iterdir())


@pytest.mark.slow
def test_a_lora_run_resumes_with_its_own_settings_and_refuses_only_what_cannot_change(finetuned, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(finetuned[0], work, symlinks=True)
    plain = [arg for arg in LORA if not arg.startswith("--lora_")]
    run_ok("train.py", *TINY, *LORA, "--init_from=base/ckpt.pt", "--max_iters=5", "--out_dir=halfway", cwd=work)
    shutil.copytree(work / "halfway", work / "again")
    # no lora_* flag at all: the adapters as the checkpoint holds them, and the losses of the straight run
    resumed = run_ok("train.py", *TINY, *plain, "--init_from=resume", "--out_dir=halfway", "--max_iters=10", cwd=work)
    expected, got = parse_losses(finetuned[1])[0], parse_losses(resumed)[0]
    assert sorted(got) == list(range(5, 10)) and all(got[i] == expected[i] for i in got) and "lora_" not in resumed
    # the targets in another order, another lora_dropout (as plain dropout may change), Muon asked for: LoRA trains
    # with AdamW alone
    targets = "--lora_targets=mlp.c_proj,mlp.c_fc,attn.c_proj,attn.c_attn"
    changed = run_ok("train.py", *TINY, *LORA, targets, "--lora_dropout=0.2", "--muon_learning_rate=0.02",
                     "--init_from=resume", "--out_dir=again", "--max_iters=10", cwd=work)
    assert "lora_dropout 0.1 -> 0.2" in changed and "step 10:" in changed
    assert torch.load(work / "again" / "ckpt.pt", weights_only=True)["lora"]["dropout"] == 0.2


@pytest.mark.slow
def test_resuming_with_other_adapters_is_refused(finetuned):
    folder, _ = finetuned
    message = script_error("train.py", *TINY, *LORA, "--lora_rank=8", "--init_from=resume", "--max_iters=12",
                           cwd=folder)
    assert "the checkpoint's model differs: lora_rank=4 (asked 8)" in message


# -----------------------------------------------------------------------------
# bench.py's memory part, on a tiny shape (its figures are for people)

@pytest.mark.slow
def test_the_memory_part_measures_every_configuration(tmp_path):
    out = run_ok("bench.py", "--part=memory", "--device=cpu", "--n_layer=1", "--n_embd=32", "--n_head=2",
                 "--block_size=16", "--vocab_size=100", "--batch_size=2", cwd=tmp_path)
    lines = [line for line in out.splitlines() if " peak " in line]
    assert [line.split(" peak ")[0].strip() for line in lines] == [
        "nanoGPT's step", "this repository, as it was", "activation checkpointing", "chunked loss", "both",
        "LoRA (rank 8) with both"]
    assert lines[0].split("(")[1].startswith("1.00x") and all(" MB (" in line and "s (" in line for line in lines)
