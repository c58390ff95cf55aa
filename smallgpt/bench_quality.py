"""
bench.py's quality parts: what a recipe reaches, in val bits per byte of the text, for the time of the whole
prepare.py and train.py processes, the figures read from each run's metrics.jsonl. recipe_repeats runs of each,
in turn, at seeds seed, seed + 1, ...; the figures are medians.

- bench_recipe(opts, work_dir): config/shakespeare_char_cpu.py and config/shakespeare_bpe_cpu.py (with prepare.py
  --tokenizer=bpe) against nanoGPT's CPU command; with --device=cuda, the GPU recipe (config/shakespeare_char.py)
  against nanoGPT's GPU command (its config/train_shakespeare_char.py, compiled).
- bench_tokenizers(opts, work_dir): characters, learned BPEs of 512, 1024 and 2048 tokens, and GPT-2's BPE, each
  with the best CPU settings found.
- bench_ablation(opts, work_dir): the character recipe with one of its parts taken out at a time.
- bench_tune(opts, work_dir): a search with tune.py from config/tune_shakespeare_char_cpu.py (an hour on 2 cores),
  then its best.py trained again, in the recipe's own training time, against config/shakespeare_char_cpu.py; and
  tune.py's cost per trial beside train.py's own.
- bench_finetune(opts, work_dir): a base model trained on Python's documentation (its reference topics, English
  prose with examples) in GPT-2's BPE, then finetuned on text of another kind, the standard library's source files
  of this machine's Python (as .jsonl documents), in full and with LoRA (rank 8), the same steps and data: val
  loss, trainable parameters, checkpoint size, time.
- working_folder(tmp): the folder the runs work in, which sees data/shakespeare_char.
"""

import csv
import json
import os
import sys
import sysconfig
from statistics import median

import torch

from smallgpt.bench_prepare import DATA_DIR, ROOT, run, run_prepare
from smallgpt.errors import UserError
from smallgpt.metrics import read_metrics

RECIPE = os.path.join(ROOT, "config", "shakespeare_char_cpu.py")
TUNE_CONFIG = os.path.join(ROOT, "config", "tune_shakespeare_char_cpu.py")
RECIPE_NAME = "config/shakespeare_char_cpu.py"
GPU_RECIPE = os.path.join(ROOT, "config", "shakespeare_char.py")
BPE_RECIPE = os.path.join(ROOT, "config", "shakespeare_bpe_cpu.py")
# nanoGPT's config/train_shakespeare_char.py spelled out; its CPU command (from its README) adds flags to it
NANOGPT_CONFIG = ["--eval_interval=250", "--eval_iters=200", "--log_interval=10", "--always_save_checkpoint=False",
                  "--batch_size=64", "--block_size=256", "--n_layer=6", "--n_head=6", "--n_embd=384", "--dropout=0.2",
                  "--learning_rate=1e-3", "--max_iters=5000", "--lr_decay_iters=5000", "--min_lr=1e-4", "--beta2=0.99",
                  "--warmup_iters=100"]
NANOGPT_CPU = NANOGPT_CONFIG + ["--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1",
                                "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128",
                                "--max_iters=2000", "--lr_decay_iters=2000", "--dropout=0.0"]
NANOGPT_GPU = NANOGPT_CONFIG + ["--compile=True"]  # nanoGPT's `python train.py config/train_shakespeare_char.py`


def val_figures(out_dir):
    """The final val loss and bits per byte of the run in out_dir, and its best val loss, bpb and iteration."""
    evals = [record for record in read_metrics(os.path.join(out_dir, "metrics.jsonl")) if record["kind"] == "eval"]
    best = min(evals, key=lambda record: record["val_loss"])
    return evals[-1]["val_loss"], evals[-1]["val_bpb"], best["val_loss"], best["val_bpb"], best["iter"]


def recipe_runs(opts, runs, work_dir):
    """
    For each (name, prepare.py args or None, train.py args or a function that returns them), recipe_repeats times
    in turn, each time with the next seed (a repeated seed would repeat the loss), run prepare.py and train.py in
    work_dir, the checkpoint going to out_dir_of(name); print the medians of the wall time of both, prepare
    included, and of the val figures.
    """
    results = {name: [] for name, _, _ in runs}
    for repeat in range(opts.recipe_repeats):
        for name, prepare_args, train_args in runs:
            prepare_wall = run_prepare(prepare_args, work_dir)[0] if prepare_args else 0.0
            if callable(train_args):  # arguments that depend on the runs before it in this repeat
                train_args = train_args()
            _, wall = run([sys.executable, os.path.join(ROOT, "train.py"), *train_args, f"--seed={opts.seed + repeat}",
                                f"--out_dir={out_dir_of(name)}"], work_dir)
            results[name].append((prepare_wall + wall, *val_figures(os.path.join(work_dir, out_dir_of(name)))))
    for name, rows in results.items():
        walls, losses, bpbs, bests, best_bpbs, best_iters = zip(*rows)
        each = f"  (median of {len(rows)} seeds: {', '.join(f'{bpb:.3f}' for bpb in bpbs)})" if len(rows) > 1 else ""
        print(f"{name:44s} {median(walls):6.1f}s  final val bpb {median(bpbs):.3f} (loss {median(losses):.4f}), best "
              f"{median(best_bpbs):.3f} (loss {median(bests):.4f}, iter {median(best_iters):.0f}){each}")


def out_dir_of(name):
    return "out-" + "".join(c if c.isalnum() else "-" for c in name)


def working_folder(tmp):
    """tmp with data/shakespeare_char in it (a link), where recipes prepare and train as in a checkout."""
    if not os.path.exists(os.path.join(DATA_DIR, "val.bin")):
        raise UserError(f"{DATA_DIR} is not prepared: run python prepare.py first")
    os.makedirs(os.path.join(tmp, "data"))
    os.symlink(os.path.abspath(DATA_DIR), os.path.join(tmp, DATA_DIR))
    return tmp


def bpe_prepare(*args):
    """prepare.py's arguments for a BPE of Tiny Shakespeare, from data/shakespeare_char's copy of the text."""
    return [f"--input={os.path.abspath(os.path.join(DATA_DIR, 'input.txt'))}", *args]


def bench_recipe(opts, work_dir):
    print("\n## recipe: the whole prepare.py and train.py processes; val bits per byte of the text")
    if opts.device_type == "cuda":
        recipe_runs(opts, [("nanoGPT's GPU command", None, NANOGPT_GPU + [f"--device={opts.device}"]),
                     ("config/shakespeare_char.py", None, [GPU_RECIPE, f"--device={opts.device}"])], work_dir)
    else:
        recipe_runs(opts, [("nanoGPT's CPU command", None, NANOGPT_CPU),
                     (RECIPE_NAME, None, [RECIPE, "--device=cpu"]),
                     ("config/shakespeare_bpe_cpu.py", bpe_prepare("--tokenizer=bpe", "--dataset=shakespeare_bpe"),
                      [BPE_RECIPE, "--device=cpu"])], work_dir)


def bench_tokenizers(opts, work_dir):
    print("\n## tokenizers: each with the best CPU settings found, prepare.py and train.py; val bits per byte")
    steps = lambda n: [f"--max_iters={n}", f"--lr_decay_iters={n}", f"--eval_interval={n}"]
    recipe_runs(opts, [("characters (config/shakespeare_char_cpu.py)", None, [RECIPE, "--device=cpu"]),
                 ("BPE of 512", bpe_prepare("--tokenizer=bpe", "--vocab_size=512", "--dataset=bpe512"),
                  [BPE_RECIPE, "--device=cpu", "--dataset=bpe512", *steps(760)]),
                 ("BPE of 1024 (config/shakespeare_bpe_cpu.py)",
                  bpe_prepare("--tokenizer=bpe", "--dataset=shakespeare_bpe"), [BPE_RECIPE, "--device=cpu"]),
                 ("BPE of 2048", bpe_prepare("--tokenizer=bpe", "--vocab_size=2048", "--dataset=bpe2048"),
                  [BPE_RECIPE, "--device=cpu", "--dataset=bpe2048", *steps(580)]),
                 ("GPT-2's BPE (50257)", bpe_prepare("--tokenizer=gpt2", "--dataset=gpt2"),
                  [BPE_RECIPE, "--device=cpu", "--dataset=gpt2", *steps(160), "--batch_size=6",
                   "--warmup_iters=10", "--learning_rate=1e-2", "--muon_learning_rate=0.07"])], work_dir)


def bench_ablation(opts, work_dir):
    print("\n## ablation: config/shakespeare_char_cpu.py with one change at a time, the same number of steps")
    recipe_runs(opts, [("the recipe", None, [RECIPE]),
                 ("AdamW instead of Muon", None, [RECIPE, "--muon_learning_rate=0.0"]),
                 ("learned positions instead of rotary", None, [RECIPE, "--rotary=False"]),
                 ("no QK-norm", None, [RECIPE, "--qk_norm=False", "--attn_scale=1.0"]),
                 ("attention at the usual scale", None, [RECIPE, "--attn_scale=1.0"])], work_dir)


def bench_tune(opts, work_dir):
    print("\n## tune: a search from config/tune_shakespeare_char_cpu.py, then its best settings against the recipe")
    study_dir = os.path.join(work_dir, "out-tune")
    stdout, search_wall = run([sys.executable, os.path.join(ROOT, "tune.py"), TUNE_CONFIG, f"--study_dir={study_dir}",
                               f"--seed={opts.seed}"], work_dir)
    print("\n".join(line for line in stdout.splitlines() if not line.startswith("trial ")))
    with open(os.path.join(study_dir, "trials.csv"), newline="") as f:
        trials = [row for row in csv.DictReader(f)]
    records = [read_metrics(os.path.join(study_dir, f"trial_{row['number']}", "metrics.jsonl")) for row in trials]
    trial_seconds = sum(float(row["seconds"] or 0) for row in trials)
    train_seconds = sum(rows[-1]["elapsed"] for rows in records if rows)
    print(f"search: {len(trials)} trials in {search_wall / 60:.1f} min; train.py's own time (from its first step) "
          f"{train_seconds:.0f}s, process start-up and tune.py's reading {trial_seconds - train_seconds:.0f}s "
          f"({(trial_seconds - train_seconds) / train_seconds:.1%}), tune.py between trials "
          f"{search_wall - trial_seconds:.0f}s ({(search_wall - trial_seconds) / train_seconds:.1%})")
    with open(os.path.join(study_dir, "best.py")) as f:
        print(f"\n{study_dir}/best.py:\n{f.read()}")

    def best_in_the_recipes_time():
        # the recipe's training time in this repeat, measured just before, so that both get the same time today
        recipe_metrics = os.path.join(work_dir, out_dir_of(RECIPE_NAME), "metrics.jsonl")
        recipe_seconds = training_seconds(read_metrics(recipe_metrics))
        print(f"the recipe trained for {recipe_seconds:.1f}s: best.py gets --max_seconds={int(recipe_seconds)}")
        return [os.path.join(study_dir, "best.py"), f"--max_seconds={int(recipe_seconds)}", "--eval_interval=1000000"]
    recipe_runs(opts, [(RECIPE_NAME, None, [RECIPE, "--device=cpu"]),
                 ("out-tune/best.py", None, best_in_the_recipes_time)], work_dir)


def training_seconds(records):
    """How long a run's steps took, from its first to its last (without the final evaluation), by its metrics."""
    steps = [record for record in records if record["kind"] == "iter"]
    step_seconds = (steps[-1]["elapsed"] - steps[0]["elapsed"]) / (steps[-1]["iter"] - steps[0]["iter"])
    return steps[-1]["elapsed"] + (records[-1]["iter"] - 1 - steps[-1]["iter"]) * step_seconds


# the finetune part's base model: GPT-2's vocabulary, a small trunk, as finetuning GPT-2 itself would be but smaller
FINETUNE_MODEL = ["--n_layer=4", "--n_head=4", "--n_embd=256", "--block_size=128", "--batch_size=8", "--bias=False",
                  "--device=cpu", "--eval_iters=20", "--log_interval=50", "--warmup_iters=20", "--weight_decay=0.0"]
FINETUNE_RUNS = {"full finetuning": ["--learning_rate=3e-4", "--min_lr=3e-5"],
                 "LoRA, rank 8": ["--lora_rank=8", "--learning_rate=3e-3", "--min_lr=3e-4"]}


def python_texts(work_dir, megabytes):
    """
    Two kinds of text from this machine's Python, as .jsonl documents in work_dir: docs.jsonl, its documentation's
    topics (the reference's English prose, with examples), and python.jsonl, its standard library's source files
    (not their tests), up to megabytes.
    """
    from pydoc_data.topics import topics  # the text of `help("TOPIC")`, in every Python installation
    with open(os.path.join(work_dir, "docs.jsonl"), "w", encoding="utf-8") as out:
        out.writelines(json.dumps({"text": text}) + "\n" for text in topics.values())
    stdlib, size = sysconfig.get_paths()["stdlib"], 0
    with open(os.path.join(work_dir, "python.jsonl"), "w", encoding="utf-8") as out:
        for folder, subfolders, files in os.walk(stdlib):
            subfolders[:] = sorted(name for name in subfolders if name not in ("test", "tests", "site-packages",
                                                                                  "pydoc_data"))
            for name in sorted(name for name in files if name.endswith(".py")):
                with open(os.path.join(folder, name), encoding="utf-8", errors="replace") as f:
                    text = f.read()
                out.write(json.dumps({"text": text}) + "\n")
                size += len(text.encode())
                if size > megabytes * 10**6:
                    return


def bench_finetune(opts, work_dir):
    print(f"\n## finetune: a base model of Python's documentation (GPT-2's BPE, 4 layers x 256), then "
          f"{opts.finetune_iters} steps on Python's source code, in full and with LoRA")
    python_texts(work_dir, opts.finetune_megabytes)
    for name in ("docs", "python"):
        run_prepare([f"--input={name}.jsonl", "--tokenizer=gpt2", f"--dataset={name}"], work_dir)
    steps = lambda n: [f"--max_iters={n}", f"--lr_decay_iters={n}", f"--eval_interval={n}", f"--seed={opts.seed}"]
    train = [sys.executable, os.path.join(ROOT, "train.py"), *FINETUNE_MODEL]
    run([*train, "--dataset=docs", *steps(opts.finetune_iters * 3 // 2), "--out_dir=out-base"], work_dir)
    figures = {}
    for name, args in FINETUNE_RUNS.items():
        out_dir = os.path.join(work_dir, out_dir_of(name))
        _, wall = run([*train, "--dataset=python", "--init_from=out-base/ckpt.pt", *steps(opts.finetune_iters), *args,
                       f"--out_dir={out_dir}"], work_dir)
        checkpoint = torch.load(os.path.join(out_dir, "ckpt.pt"), weights_only=True)
        weights = {key: value for key, value in checkpoint["model"].items() if key != "lm_head.weight"}  # tied
        figures[name] = (val_figures(out_dir)[0], sum(value.numel() for value in weights.values()),
                         os.path.getsize(os.path.join(out_dir, "ckpt.pt")), wall)
    first = next(record for record in read_metrics(os.path.join(out_dir, "metrics.jsonl")) if record["kind"] == "eval")
    print(f"the base: val loss {val_figures(os.path.join(work_dir, 'out-base'))[0]:.4f} on the documentation, "
          f"{first['val_loss']:.4f} on the source before finetuning")
    full_loss, full_params, full_size, _ = figures["full finetuning"]
    for name, (loss, params, size, wall) in figures.items():
        print(f"{name:16s} val loss {loss:.4f} ({loss / full_loss - 1:+6.1%})  trainable {params:11,} "
              f"({params / full_params:6.1%})  ckpt.pt {size / 2**20:7.2f} MB ({size / full_size:6.1%})  {wall:6.1f}s")
