"""
Evaluate a model on benchmarks: HellaSwag is built in, and every task of EleutherAI's lm-evaluation-harness
comes through it (pip install lm-eval), for any checkpoint of ours, rotary and QK-norm models included.

    python eval.py --tasks=hellaswag                        # out/ckpt.pt on HellaSwag's 10,042 validation examples
    python eval.py --init_from=gpt2 --tasks=hellaswag       # OpenAI's GPT-2 (124M)
    python eval.py --tasks=hellaswag --limit=500            # the first 500 examples, for a quick look
    python eval.py --tasks=arc_easy,piqa,lambada_openai     # tasks of lm-evaluation-harness
    torchrun --nproc_per_node=8 eval.py --tasks=hellaswag   # the examples shared out among 8 processes

Each task gets a line, and results_file the figures with the model and the settings, as JSON. HellaSwag is scored
as build-nanogpt scores it (smallgpt/hellaswag.py): its acc_norm divides an ending's loss by its tokens, where
lm-evaluation-harness's divides by its characters, so the two differ for the same model.
"""

import difflib
import json
import os
import sys

from smallgpt.checkpoint import load_model
from smallgpt.configurator import configure
from smallgpt.devices import end_run, start_run
from smallgpt.errors import UserError
from smallgpt.files import make_dir, replaced_atomically
from smallgpt.hellaswag import hellaswag_accuracy, hellaswag_share, load_examples

BUILT_IN = ("hellaswag",)

# -----------------------------------------------------------------------------
init_from = "resume"  # 'resume' (out_dir/ckpt.pt), 'gpt2'...'gpt2-xl', a Hugging Face GPT-2 folder, a ckpt.pt
out_dir = "out"  # where train.py wrote ckpt.pt
tasks = "hellaswag"  # comma-separated: hellaswag, or the names of lm-evaluation-harness tasks
# the first `limit` examples of each task only; None: all
limit = None  # None or int [1, inf); must be a whole number of examples, 1 or more (leave it out for all)
hellaswag_file = ""  # a HellaSwag-format .jsonl (path or URL); empty: the validation split, downloaded once
harness_include = ""  # a folder of more task definitions (YAML) for lm-evaluation-harness
results_file = ""  # the JSON of results; empty: eval.json in out_dir, or eval_NAME.json for a pretrained model
# tokens per forward pass, padding included (lower it if memory runs out); None: 2,048 on a CPU, 8,192 on a GPU
batch_tokens = None  # None or int [1, inf)
device = "auto"  # 'auto' (cuda, then mps, then cpu), 'cpu', 'cuda', 'cuda:1', 'mps'
dtype = "auto"  # one of auto, float32, bfloat16, float16: auto: bfloat16 on CUDA where it runs, else float16
backend = "auto"  # one of auto, nccl, gloo, mpi, ucc, xccl: under torchrun; auto: nccl on CUDA
seed = 1337  # [0, 4294967295]
# -----------------------------------------------------------------------------
config = configure(globals(), sys.argv[1:])
globals().update(config)
# -----------------------------------------------------------------------------

task_names = list(dict.fromkeys(name.strip() for name in tasks.split(",") if name.strip()))
if not task_names:
    raise UserError("no task given: name one or more with --tasks=, e.g. --tasks=hellaswag")
harness_names = [name for name in task_names if name not in BUILT_IN]
if harness_names:
    try:
        from smallgpt import harness  # imported only now: lm-evaluation-harness is large and optional
    except ModuleNotFoundError as e:
        if not (e.name or "").startswith("lm_eval"):
            raise
        close = difflib.get_close_matches(harness_names[0], BUILT_IN, n=1)
        raise UserError(f"unknown task '{harness_names[0]}'; did you mean '{close[0]}'?" if close else
                        f"task '{harness_names[0]}' is not built in ({', '.join(BUILT_IN)} is) and comes from "
                        f"EleutherAI's lm-evaluation-harness: pip install lm-eval") from None
    task_manager = harness.task_manager(harness_names, harness_include, BUILT_IN)
if not results_file:
    name = "" if init_from == "resume" else "_" + os.path.basename(os.path.normpath(init_from))
    results_file = os.path.join(out_dir, f"eval{name}.json")

# under torchrun, the examples are shared out among the processes (smallgpt/devices.py)
device, dtype, autocast, rank, world_size = start_run(device, dtype, seed, backend)
master_process = rank == 0  # prints and writes the results
if master_process:
    make_dir(os.path.dirname(results_file) or ".", "the results folder")

model, tokenizer_spec = load_model(init_from, out_dir)
model.eval()
model.to(device)
examples = load_examples(hellaswag_file, limit or 0, rank) if "hellaswag" in task_names else None

results = {}
if examples:
    hellaswag = hellaswag_share(examples, tokenizer_spec, rank, world_size)
    results["hellaswag"] = hellaswag_accuracy(model, hellaswag, autocast, progress=master_process,
                                              batch_tokens=batch_tokens)
    if master_process:
        figures = results["hellaswag"]
        print(f"hellaswag: acc {figures['acc']:.4f}, acc_norm {figures['acc_norm']:.4f} "
              f"({figures['examples']} examples)")
if harness_names:
    harness_model = harness.HarnessModel(model, tokenizer_spec, autocast, batch_tokens)
    for name, figures in harness.run_tasks(harness_model, harness_names, task_manager, limit).items():
        results[name] = figures
        if master_process:
            shown = ", ".join(f"{metric} {value:.4f}" for metric, value in figures.items() if metric != "examples")
            note = "; acc_norm per character" if "acc_norm" in figures else ""
            print(f"{name}: {shown} ({figures['examples']} examples{note})")

if master_process:
    source = os.path.join(out_dir, "ckpt.pt") if init_from == "resume" else init_from
    with replaced_atomically(results_file, what="results") as [tmp], open(tmp, "w") as f:
        json.dump({"model": source, "settings": config, "results": results}, f, indent=2)
    print(f"results written to {results_file}")
end_run()
