"""
Evaluation: HellaSwag's scoring checked against transformers' GPT-2 on a few rows kept in tests/data, batching
that changes no figure, the download and its checksum from a local server, lm-evaluation-harness's tasks through
our model, eval.py and train.py's eval_hellaswag as a user runs them, and clean failures on bad input.
"""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, TINY, assert_clean_error, needs_gpt2_bpe, run_ok, run_script, script_error, user_error
from model import GPT, GPTConfig
from smallgpt import hellaswag
from smallgpt.devices import mixed_precision
from smallgpt.hellaswag import fetch_hellaswag, git_blob_id, hellaswag_accuracy, hellaswag_share, read_examples
from smallgpt.likelihood import continuation_losses, lenient_encoder, shared_rows, sharing_pays, window
from smallgpt.tokenizer import GPT2_SPEC, char_spec

ROWS = ROOT / "tests" / "data" / "hellaswag_rows.jsonl"  # 8 examples in HellaSwag's format
NO_AUTOCAST = mixed_precision("cpu", "float32")


def alphabet_spec():
    """A char tokenizer of the rows' letters but a few, which a character model then never sees."""
    text = "".join(c + "".join(e) for c, e, _ in read_examples(ROWS))
    return char_spec("".join(sorted(set(text) - set("[]0123456789"))), "rows")


def tiny_gpt(vocab_size, block_size=64, n_embd=32, **options):
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=n_embd, block_size=block_size, vocab_size=vocab_size, **options))


def test_a_window_keeps_the_end_of_a_long_context_and_scores_only_the_continuation():
    assert window([1, 2, 3], [4, 5], block_size=8) == ([1, 2, 3, 4], [-1, -1, 4, 5])
    assert window([1, 2, 3], [4, 5], block_size=3) == ([2, 3, 4], [-1, 4, 5])  # the context loses its start
    assert window([1, 2, 3], [4, 5, 6, 7], block_size=2) == ([5, 6], [6, 7])  # only what has a context is scored
    assert window([1], [], block_size=4) == ([], [])


def test_pairs_with_the_same_windowed_context_share_a_row_where_it_pays():
    pairs = [([1, 2], [3, 4]), ([1, 2], [5]), ([7], [8, 9]), ([1, 2], [6, 6, 6])]
    assert shared_rows(pairs, block_size=8, n_embd=64) == [
        ([1, 2, 3, 6, 6], [0, 1, 2, 2, 3], [0, 0, 1, 3, 3],  # the one-token ending adds no token
         [(1, 3, 0), (2, 4, 0), (1, 5, 1), (1, 6, 3), (3, 6, 3), (4, 6, 3)]),
        ([7, 8], [0, 1], [0, 1], [(0, 8, 2), (1, 9, 2)])]
    # cut to the block, the same context keeps a different start for endings of different lengths
    assert [row[0] for row in shared_rows([([1, 2, 3], [4]), ([1, 2, 3], [5, 6]), ([1, 2, 3], [7])], 3, 64)] == \
        [[1, 2, 3], [2, 3, 5]]
    assert shared_rows([([1], []), ([], [2])], block_size=4, n_embd=64) == []  # nothing to score
    # a short context and long endings in a narrow model: a row's attention would cost more than it saves
    assert sharing_pays(200, [100] * 4, n_embd=384) and not sharing_pays(30, [100] * 4, n_embd=128)
    assert len(shared_rows([([1] * 30, [2] * 100)] * 4, block_size=128, n_embd=128)) == 4


@pytest.mark.parametrize("block_size, n_embd", [(48, 32), (512, 128)])  # most contexts cut to the block, or none
@pytest.mark.parametrize("options", [{}, {"rotary": True, "qk_norm": True, "attn_scale": 2.0}])
def test_batched_losses_equal_each_pair_scored_alone(options, block_size, n_embd):
    spec = alphabet_spec()
    model = tiny_gpt(spec["vocab_size"], block_size=block_size, n_embd=n_embd, **options).eval()
    examples, _ = hellaswag_share(read_examples(ROWS), spec)
    pairs = [pair for ending_pairs, _ in examples for pair in ending_pairs]
    n_rows = len(shared_rows(pairs, block_size, n_embd))  # a row an example, or more where its endings' windows differ
    assert n_rows == len(examples) if block_size == 512 else len(examples) < n_rows < len(pairs)
    batched = continuation_losses(model, pairs, NO_AUTOCAST, batch_tokens=300)  # several padded batches
    for (context, continuation), (loss, n_tokens, greedy) in zip(pairs, batched):
        x, y = window(context, continuation, block_size)
        logits, _ = model(torch.tensor([x]), torch.tensor([x]))
        targets = torch.tensor(y)
        alone = F.cross_entropy(logits[0], targets, ignore_index=-1, reduction="sum").item()
        assert loss == pytest.approx(alone, abs=1e-4)
        assert n_tokens == (targets != -1).sum().item() == min(len(continuation), block_size)
        assert greedy == bool((logits[0].argmax(-1) == targets)[targets != -1].all())


def scaled_gpt(vocab_size, **options):
    """A tiny GPT with random weights 10 times the usual size: logits of some units, as a trained model's."""
    model = tiny_gpt(vocab_size, **options)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return model.eval()


# bfloat16 and float16 autocast, with their units of roundoff: a loss under autocast must be within 8 of them (relative)
# of float32's, as training's are (tests/test_matrix.py)
PRECISIONS = [("bfloat16", 2**-8), ("float16", 2**-11)]


@pytest.mark.parametrize("options", [{}, {"rotary": True, "qk_norm": True, "attn_scale": 2.0},
                                     {"block_size": 512, "n_embd": 128}])  # the last: each context once, in a row
@pytest.mark.parametrize("dtype, roundoff", PRECISIONS)
def test_hellaswag_under_autocast_scores_as_float32_does(dtype, roundoff, options):
    spec = alphabet_spec()
    model = scaled_gpt(spec["vocab_size"], **options)
    examples, n = hellaswag_share(read_examples(ROWS), spec)
    pairs = [pair for ending_pairs, _ in examples for pair in ending_pairs]
    if "n_embd" in options:
        assert len(shared_rows(pairs, model.config.block_size, model.config.n_embd)) == len(examples)
    expected = continuation_losses(model, pairs, NO_AUTOCAST)
    losses = continuation_losses(model, pairs, mixed_precision("cpu", dtype))
    for (loss, n_tokens, _), (expected_loss, expected_tokens, _) in zip(losses, expected):
        assert n_tokens == expected_tokens and loss == pytest.approx(expected_loss, rel=8 * roundoff)
    # so the same endings are picked, unless two were closer than that
    for k in range(n):
        ranked = sorted(expected[4 * k:4 * k + 4])
        if ranked[1][0] - ranked[0][0] > 16 * roundoff * ranked[1][0]:
            assert min(losses[4 * k:4 * k + 4]) == losses[expected.index(ranked[0])]
    assert hellaswag_accuracy(model, (examples, n), mixed_precision("cpu", dtype))["examples"] == 8


def test_a_character_model_leaves_out_the_characters_it_has_never_seen():
    encode = lenient_encoder(alphabet_spec())
    assert encode("[42] steps") == encode(" steps")


@needs_gpt2_bpe
def test_losses_and_accuracy_match_transformers_gpt2_with_the_same_weights(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64))
    with torch.no_grad():
        for p in hf.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    hf.eval().save_pretrained(tmp_path)
    ours = GPT.from_pretrained(str(tmp_path)).eval()
    examples, n = hellaswag_share(read_examples(ROWS), GPT2_SPEC)
    pairs = [pair for ending_pairs, _ in examples for pair in ending_pairs]
    losses = continuation_losses(ours, pairs, NO_AUTOCAST)
    right = right_norm = 0
    for k, (ending_pairs, label) in enumerate(examples):
        sums, means = [], []
        for context, ending in ending_pairs:  # the whole row through transformers, the ending's tokens scored
            logits = hf(torch.tensor([context + ending])).logits[0, len(context) - 1:-1]
            sums.append(F.cross_entropy(logits, torch.tensor(ending), reduction="sum").item())
            means.append(sums[-1] / len(ending))
        ours_k = losses[4 * k:4 * k + 4]
        assert [n_tokens for _, n_tokens, _ in ours_k] == [len(ending) for _, ending in ending_pairs]
        assert [loss / n_tokens for loss, n_tokens, _ in ours_k] == pytest.approx(means, abs=1e-5)  # per token
        assert [loss for loss, _, _ in ours_k] == pytest.approx(sums, rel=1e-6)
        right += sums.index(min(sums)) == label
        right_norm += means.index(min(means)) == label
    figures = hellaswag_accuracy(ours, (examples, n), NO_AUTOCAST)
    assert figures == {"acc": right / 8, "acc_norm": right_norm / 8, "examples": 8}


def test_examples_are_read_up_to_the_limit_and_bad_rows_are_refused(tmp_path):
    assert len(read_examples(ROWS)) == 8 and len(read_examples(ROWS, limit=3)) == 3
    context, endings, label = read_examples(ROWS)[1]
    assert context.startswith("The king") and len(endings) == 4 and label == 1
    bad = tmp_path / "bad.jsonl"
    for line, fragment in [('{"ctx": "a", "endings": ["b", "c"]}', "lacks 'label'"), ("[1, 2]", "not a JSON object"),
                           ('{"ctx": "a", "endings": ["b", "c"], "label": 2}', "the index of the right one"),
                           ("{not json", "not a JSON object")]:
        bad.write_text(ROWS.read_text().splitlines()[0] + "\n" + line + "\n")
        user_error(lambda: read_examples(bad), "bad.jsonl, line 2", fragment)
    bad.write_text("\n")
    user_error(lambda: read_examples(bad), "holds no HellaSwag examples")
    user_error(lambda: read_examples(tmp_path / "none.jsonl"), "HellaSwag file", "not found")


@pytest.fixture
def served_validation_split(tmp_path, http_server, monkeypatch):
    """The rows as the validation split that a local server serves, in tmp_path as the working folder."""
    shutil.copy(ROWS, tmp_path / "www" / "hellaswag_val.jsonl")
    monkeypatch.setattr(hellaswag, "HELLASWAG_URL", f"{http_server}/hellaswag_val.jsonl")
    monkeypatch.setattr(hellaswag, "HELLASWAG_BLOB_ID", git_blob_id(ROWS))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "data" / "hellaswag" / "hellaswag_val.jsonl"


def test_the_validation_split_is_downloaded_once_and_checked_at_every_use(served_validation_split, capsys):
    path = served_validation_split
    assert fetch_hellaswag() == os.path.join("data", "hellaswag", "hellaswag_val.jsonl")
    assert path.read_bytes() == ROWS.read_bytes() and "downloading" in capsys.readouterr().out
    assert not list(path.parent.glob("*.part"))
    fetch_hellaswag()
    assert "downloading" not in capsys.readouterr().out  # whole: read as it is
    path.write_text(ROWS.read_text()[:-20])  # cut short, or changed: fetched again
    fetch_hellaswag()
    assert path.read_bytes() == ROWS.read_bytes() and "checksum differs" in capsys.readouterr().out


def test_a_download_that_is_not_the_known_file_is_refused(served_validation_split, tmp_path):
    (tmp_path / "www" / "hellaswag_val.jsonl").write_text(ROWS.read_text().replace("eggs", "ham"))
    user_error(fetch_hellaswag, "not the HellaSwag validation split", "checksum differs",
               "download it by hand into data/hellaswag/hellaswag_val.jsonl")
    assert not served_validation_split.exists()


def test_no_network_and_no_file_says_where_to_put_it(tmp_path, monkeypatch):
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(hellaswag, "HELLASWAG_URL", f"http://127.0.0.1:{port}/hellaswag_val.jsonl")
    monkeypatch.chdir(tmp_path)
    user_error(fetch_hellaswag, "could not download", "by hand into data/hellaswag/hellaswag_val.jsonl",
               "--hellaswag_file=")


def test_any_url_is_downloaded_into_the_hellaswag_folder(tmp_path, http_server, monkeypatch):
    shutil.copy(ROWS, tmp_path / "www" / "mine.jsonl")
    monkeypatch.chdir(tmp_path)
    path = fetch_hellaswag(f"{http_server}/mine.jsonl")
    assert path == os.path.join("data", "hellaswag", "mine.jsonl") and len(read_examples(path)) == 8


# -----------------------------------------------------------------------------
# lm-evaluation-harness

TASK_YAML = """task: rows
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {rows}
validation_split: validation
output_type: multiple_choice
doc_to_text: "{{{{ctx}}}}"
doc_to_target: label
doc_to_choice: "{{{{endings}}}}"
metric_list:
  - metric: acc
"""


@pytest.fixture
def task_folder(tmp_path):
    """A folder with the definition of a task 'rows' on the rows, for lm-evaluation-harness."""
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "rows.yaml").write_text(TASK_YAML.format(rows=ROWS))
    return folder


@pytest.mark.slow
@needs_gpt2_bpe
def test_the_harness_picks_the_same_endings_as_our_hellaswag(task_folder, monkeypatch):
    pytest.importorskip("lm_eval")
    from lm_eval import simple_evaluate
    from smallgpt.harness import HarnessModel, run_tasks, task_manager
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    model = tiny_gpt(50304)
    examples, n = hellaswag_share(read_examples(ROWS), GPT2_SPEC)
    losses = continuation_losses(model, [pair for ending_pairs, _ in examples for pair in ending_pairs], NO_AUTOCAST)
    ours = [min(range(4), key=lambda e: losses[4 * k + e][0]) for k in range(n)]
    manager = task_manager(["rows"], str(task_folder))
    output = simple_evaluate(model=HarnessModel(model, GPT2_SPEC, NO_AUTOCAST), tasks=["rows"],
                             task_manager=manager, log_samples=True, bootstrap_iters=0)
    picks = {sample["doc_id"]: max(range(4), key=lambda e: sample["resps"][e][0][0])
             for sample in output["samples"]["rows"]}
    assert [picks[k] for k in range(n)] == ours
    figures = run_tasks(HarnessModel(model, GPT2_SPEC, NO_AUTOCAST), ["rows"], manager)
    assert figures["rows"]["examples"] == 8
    assert figures["rows"]["acc"] == pytest.approx(sum(p == label for p, (_, label) in zip(ours, examples)) / 8)


TWO_FILTERS_YAML = """task: two_filters
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {rows}
validation_split: validation
output_type: generate_until
doc_to_text: "{{{{ctx}}}}"
doc_to_target: "{{{{activity_label}}}}"
generation_kwargs:
  until: ["."]
  max_gen_toks: 6
filter_list:
  - name: whole
    filter:
      - function: take_first
  - name: first-word
    filter:
      - function: regex
        regex_pattern: "(\\\\w+)"
      - function: take_first
metric_list:
  - metric: exact_match
"""


@pytest.mark.slow
def test_the_harness_keeps_each_filters_figures_apart(tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    from smallgpt.harness import HarnessModel, run_tasks, task_manager
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    (tmp_path / "two_filters.yaml").write_text(TWO_FILTERS_YAML.format(rows=ROWS))
    spec = alphabet_spec()
    figures = run_tasks(HarnessModel(tiny_gpt(spec["vocab_size"]), spec, NO_AUTOCAST), ["two_filters"],
                        task_manager(["two_filters"], str(tmp_path)), limit=2)
    assert figures == {"two_filters": {"exact_match,whole": 0.0, "exact_match,first-word": 0.0, "examples": 2}}


@pytest.mark.slow
def test_the_harness_model_rolls_long_texts_and_generates_up_to_a_stop():
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from smallgpt.harness import HarnessModel
    spec = alphabet_spec()
    model = tiny_gpt(spec["vocab_size"], block_size=16).eval()
    lm = HarnessModel(model, spec, NO_AUTOCAST)
    request = lambda kind, args: Instance(request_type=kind, doc={}, arguments=args, idx=0)
    text = "The king enters the hall and sits upon his throne."
    rolled, = lm.loglikelihood_rolling([request("loglikelihood_rolling", (text,))])
    ids = lm.encode(text)
    assert len(ids) == 50
    tokens = lm.prefix + ids  # every character scored once, after the newline, in windows of 16 positions
    expected = 0.0
    for start, first_scored in [(0, 0), (16, 0), (32, 0), (34, 14)]:  # the last window: full, scoring the rest
        logits, _ = model(torch.tensor([tokens[start:start + 16]]), torch.tensor([tokens[start:start + 16]]))
        targets = torch.tensor(tokens[start + 1:start + 17])
        expected -= F.cross_entropy(logits[0, first_scored:], targets[first_scored:], reduction="sum").item()
    assert rolled == pytest.approx(expected, abs=1e-4)
    generated, = lm.generate_until([request("generate_until", ("The king", {"until": ["e"], "max_gen_toks": 40}))])
    assert "e" not in generated and len(generated) <= 40


@pytest.mark.slow
@pytest.mark.parametrize("dtype, roundoff", PRECISIONS)
def test_the_harness_model_under_autocast_gives_float32s_figures(dtype, roundoff):
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from smallgpt.harness import HarnessModel
    spec = alphabet_spec()
    model = scaled_gpt(spec["vocab_size"], block_size=16)
    request = lambda kind, args: Instance(request_type=kind, doc={}, arguments=args, idx=0)
    pairs = [request("loglikelihood", ("The king enters", ending)) for ending in (" the hall", " and sits", " a")]
    rolling = [request("loglikelihood_rolling", ("The king enters the hall and sits upon his throne.",))]
    figures = {}
    for name, autocast in (("float32", NO_AUTOCAST), (dtype, mixed_precision("cpu", dtype))):
        lm = HarnessModel(model, spec, autocast)
        figures[name] = [*(loss for loss, _ in lm.loglikelihood(pairs)), *lm.loglikelihood_rolling(rolling)]
        generated, = lm.generate_until([request("generate_until", ("The king", {"until": ["."], "max_gen_toks": 20}))])
        assert len(generated) <= 20 and "." not in generated
    assert figures[dtype] == pytest.approx(figures["float32"], rel=8 * roundoff)


# -----------------------------------------------------------------------------
# eval.py and train.py as a user runs them

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A folder with a tiny character model in out/ckpt.pt, trained with HellaSwag scored at each evaluation."""
    from conftest import with_char_data
    folder = with_char_data(tmp_path_factory.mktemp("hellaswag"))
    stdout = run_ok("train.py", *TINY, "--max_iters=20", "--eval_interval=10", "--eval_hellaswag=6",
                    f"--hellaswag_file={ROWS}", cwd=folder)
    return folder, stdout


@pytest.mark.slow
def test_train_logs_hellaswag_at_each_evaluation(trained):
    folder, stdout = trained
    scored = [line for line in stdout.splitlines() if line.startswith("step ")]
    assert len(scored) == 3 and all(", hellaswag acc_norm 0." in line for line in scored)
    records = [json.loads(line) for line in (folder / "out" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    assert len(evals) == 3 and all(0 <= r["hellaswag_acc_norm"] <= 1 for r in evals)
    assert all("hellaswag_acc_norm" not in r for r in records if r["kind"] == "iter")


@pytest.mark.slow
def test_eval_scores_a_checkpoint_and_writes_its_results(trained):
    folder, _ = trained
    stdout = run_ok("eval.py", "--tasks=hellaswag", f"--hellaswag_file={ROWS}", "--device=cpu", cwd=folder)
    line = next(line for line in stdout.splitlines() if line.startswith("hellaswag: "))
    assert line.startswith("hellaswag: acc 0.") and line.endswith("(8 examples)")
    results = json.loads((folder / "out" / "eval.json").read_text())
    assert results["model"] == os.path.join("out", "ckpt.pt") and results["settings"]["tasks"] == "hellaswag"
    figures = results["results"]["hellaswag"]
    assert line == f"hellaswag: acc {figures['acc']:.4f}, acc_norm {figures['acc_norm']:.4f} (8 examples)"
    limited = run_ok("eval.py", "--limit=3", f"--hellaswag_file={ROWS}", "--device=cpu", "--results_file=three.json",
                     cwd=folder)
    assert "(3 examples)" in limited and json.loads((folder / "three.json").read_text())["results"]
    # in bfloat16, as on a GPU: the same figures, but for an example whose best endings were near a tie
    run_ok("eval.py", f"--hellaswag_file={ROWS}", "--dtype=bfloat16", "--results_file=bf16.json", cwd=folder)
    bf16 = json.loads((folder / "bf16.json").read_text())["results"]["hellaswag"]
    assert bf16 == pytest.approx(figures, abs=1 / 8) and bf16["examples"] == 8
    assert_clean_error(run_script("eval.py", "--hellaswag_file=none.jsonl", cwd=folder),
                       "HellaSwag file 'none.jsonl' not found")


@pytest.mark.slow
def test_eval_under_torchrun_gives_the_figures_of_one_process(trained):
    folder, _ = trained
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(ROOT / "eval.py"), f"--hellaswag_file={ROWS}", "--results_file=two.json"]
    result = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    run_ok("eval.py", f"--hellaswag_file={ROWS}", "--results_file=one.json", cwd=folder)
    two, one = (json.loads((folder / name).read_text())["results"] for name in ("two.json", "one.json"))
    assert two == one and one["hellaswag"]["examples"] == 8
    assert result.stdout.count("hellaswag: acc") == 1  # printed by process 0 alone


@pytest.mark.slow
def test_eval_runs_harness_tasks_through_our_model(trained, task_folder):
    pytest.importorskip("lm_eval")
    folder, _ = trained
    result = run_script("eval.py", "--tasks=hellaswag,rows", f"--harness_include={task_folder}",
                        f"--hellaswag_file={ROWS}", "--dtype=float16", cwd=folder, env={"HF_DATASETS_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    rows = next(line for line in result.stdout.splitlines() if line.startswith("rows: "))
    assert rows.startswith("rows: acc 0.") and "(8 examples" in rows
    results = json.loads((folder / "out" / "eval.json").read_text())["results"]
    assert set(results) == {"hellaswag", "rows"}
    # the same endings picked, so the same acc, by both ways of scoring (in float16 here)
    assert results["rows"]["acc"] == results["hellaswag"]["acc"]


def without_lm_eval(*args, cwd):
    """eval.py run as if lm-evaluation-harness were not installed."""
    code = ("import runpy, sys; sys.modules['lm_eval'] = None; sys.argv = ['eval.py', *sys.argv[1:]]; "
            f"runpy.run_path({str(ROOT / 'eval.py')!r}, run_name='__main__')")
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.slow
@pytest.mark.parametrize("args, fragments", [
    (["--tasks=hellaswg"], ["unknown task 'hellaswg'", "did you mean 'hellaswag'?"]),
    (["--tasks=arc_easy"], ["task 'arc_easy' is not built in", "pip install lm-eval"]),
])
def test_tasks_that_need_lm_eval_when_it_is_missing(tmp_path, args, fragments):
    assert_clean_error(without_lm_eval(*args, cwd=tmp_path), *fragments)


@pytest.mark.parametrize("args, fragments", [
    (["--tasks="], ["no task given"]),
    (["--limit=0"], ["limit must be a whole number of examples, 1 or more"]),
    (["--limit=-5"], ["limit must be"]),
    (["--limit=2.5"], ["limit must be"]),
    (["--out_dir=nowhere"], ["no checkpoint at nowhere/ckpt.pt"]),
    (["--init_from=gpt3"], ["unknown init_from 'gpt3'"]),
    (["--limt=5"], ["did you mean 'limit'"]),
    (["--out_dir=broken"], ["broken/ckpt.pt is not a readable checkpoint"]),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, fragments):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "ckpt.pt").write_bytes(b"not a checkpoint")
    message = script_error("eval.py", *args, cwd=tmp_path)
    assert all(fragment in message for fragment in fragments), message
    assert not list(tmp_path.glob("**/*.json"))


@pytest.mark.slow
def test_unknown_harness_task_suggests_the_closest(tmp_path, task_folder):
    pytest.importorskip("lm_eval")
    assert_clean_error(run_script("eval.py", "--tasks=arc_eazy", cwd=tmp_path), "unknown task 'arc_eazy'",
                       "did you mean 'arc_easy'?")
    assert_clean_error(run_script("eval.py", "--tasks=rowz", f"--harness_include={task_folder}", cwd=tmp_path),
                       "did you mean 'rows'?")
