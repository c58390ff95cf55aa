"""
Export a model that train.py trained in Hugging Face's GPT-2 format: config.json and model.safetensors.

    python export.py                                        # out/ckpt.pt -> out/hf/
    python export.py --out_dir=out-big --export_dir=big-gpt2

transformers reads the folder (GPT2LMHeadModel.from_pretrained("out/hf"), with GPT-2's tokenizer:
AutoTokenizer.from_pretrained("gpt2")), and so do train.py and sample.py (--init_from=out/hf). Only
models that use GPT-2's BPE are exported, since that is the tokenizer GPT-2's tools pair with the format.
A model trained without biases gets zero biases, and a vocabulary padded to 50304 stays padded: the
exported model computes exactly what the checkpoint does. Needs safetensors (pip install safetensors).
"""

import os
import sys

from checkpoint import load_checkpoint
from configurator import configure, fail
from hf_format import save_pretrained

# -----------------------------------------------------------------------------
out_dir = "out"  # where train.py wrote ckpt.pt
export_dir = ""  # the folder to write; empty: out_dir/hf
# -----------------------------------------------------------------------------
globals().update(configure(dict(out_dir=out_dir, export_dir=export_dir), sys.argv[1:]))
# -----------------------------------------------------------------------------

ckpt_path = os.path.join(out_dir, "ckpt.pt")
export_dir = export_dir or os.path.join(out_dir, "hf")
try:
    model, tokenizer = load_checkpoint(ckpt_path)
except ValueError as e:
    fail(str(e))
if tokenizer["tokenizer"] != "gpt2":
    fail(f"{ckpt_path} is a {tokenizer['tokenizer']}-level model: only models that use GPT-2's BPE "
         f"(prepare.py --tokenizer=gpt2) can be exported in GPT-2's format")
try:
    save_pretrained(model, export_dir)
except (ValueError, ImportError, OSError) as e:
    fail(f"cannot export to {export_dir}: {e}")
print(f"wrote {export_dir}/config.json and model.safetensors ({model.get_num_params() / 1e6:.2f}M parameters)")
print(f"sample from it with: python sample.py --init_from={export_dir}")
