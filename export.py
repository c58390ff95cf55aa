"""
Export a model that train.py trained in Hugging Face's GPT-2 format: config.json, generation_config.json and
model.safetensors, and for a model with its own BPE (prepare.py --tokenizer=bpe) that tokenizer, as tokenizer.json
and tokenizer_config.json.

    python export.py                                        # out/ckpt.pt -> out/hf/
    python export.py --out_dir=out-big --export_dir=big-gpt2

transformers reads the folder: GPT2LMHeadModel.from_pretrained("out/hf"), and AutoTokenizer.from_pretrained
("out/hf") for a model's own BPE or ("gpt2") for GPT-2's; so do train.py and sample.py (--init_from=out/hf) for
GPT-2's. Character-level models are not exported; a LoRA checkpoint's adapters are merged into its base's weights.
A model trained without biases gets zero biases, and a padded vocabulary stays padded: the exported model computes
exactly what the checkpoint does, and generation_config.json keeps transformers' generate from drawing the padding
ids. Needs safetensors.
"""

import json
import os
import sys

from smallgpt.checkpoint import load_checkpoint
from smallgpt.configurator import configure
from smallgpt.errors import UserError
from smallgpt.files import replaced_atomically
from smallgpt.hf_format import save_pretrained
from smallgpt.tokenizer import EOT, hf_tokenizer

# -----------------------------------------------------------------------------
out_dir = "out"  # where train.py wrote ckpt.pt
export_dir = ""  # the folder to write; empty: out_dir/hf
# -----------------------------------------------------------------------------
globals().update(configure(globals(), sys.argv[1:]))
# -----------------------------------------------------------------------------

ckpt_path = os.path.join(out_dir, "ckpt.pt")
export_dir = export_dir or os.path.join(out_dir, "hf")
model, tokenizer_spec = load_checkpoint(ckpt_path)
if tokenizer_spec["tokenizer"] == "char":
    raise UserError(f"{ckpt_path} is a char-level model: only BPE models, with GPT-2's BPE (prepare.py "
                    f"--tokenizer=gpt2) or one learned from the text (--tokenizer=bpe), can be exported in "
                    f"GPT-2's format")
save_pretrained(model, export_dir, tokenizer_spec["vocab_size"])
print(f"wrote {export_dir}/config.json, generation_config.json and model.safetensors "
      f"({model.get_num_params() / 1e6:.2f}M parameters)")
if tokenizer_spec["tokenizer"] == "gpt2":
    print(f"sample from it with: python sample.py --init_from={export_dir}")
else:  # the model's own BPE, in the files that AutoTokenizer reads
    tokenizer_config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOT, "eos_token": EOT,
                        "model_max_length": model.config.block_size, "clean_up_tokenization_spaces": False}
    paths = [os.path.join(export_dir, name) for name in ("tokenizer.json", "tokenizer_config.json")]
    with replaced_atomically(*paths, what="tokenizer") as [json_tmp, config_tmp]:
        with open(json_tmp, "w", encoding="utf-8") as f:
            f.write(hf_tokenizer(tokenizer_spec).to_str())
        with open(config_tmp, "w", encoding="utf-8") as f:
            json.dump(tokenizer_config, f, indent=2)
    print(f"wrote {paths[0]} and {paths[1]}: its BPE of {tokenizer_spec['vocab_size']} tokens")
