"""
Export a model that train.py trained in Hugging Face's GPT-2 format: config.json, generation_config.json and
model.safetensors, and its tokenizer, GPT-2's BPE or its own (prepare.py --tokenizer=bpe), as tokenizer.json and
tokenizer_config.json, with the chat template of a model finetuned on conversations.

    python export.py                                        # out/ckpt.pt -> out/hf/
    python export.py --out_dir=out-big --export_dir=big-gpt2

transformers reads the folder: GPT2LMHeadModel.from_pretrained("out/hf"), AutoTokenizer.from_pretrained("out/hf")
(whose apply_chat_template gives the ids prepare.py gave the same conversation); so do train.py, sample.py and
chat.py (--init_from=out/hf). Character-level models are not exported; a LoRA checkpoint's adapters are merged into
its base's weights. A model trained without biases gets zero biases, and a padded vocabulary stays padded: the
exported model computes exactly what the checkpoint does, and generation_config.json keeps transformers' generate
from drawing the padding ids. Needs safetensors.
"""

import json
import os
import sys

from smallgpt.checkpoint import load_checkpoint
from smallgpt.configurator import configure
from smallgpt.conversations import jinja_template
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
# the tokenizer, GPT-2's or the model's own BPE, in the files that AutoTokenizer reads; a model finetuned on
# conversations keeps its chat template there, which apply_chat_template renders as prepare.py did
tokenizer_config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOT, "eos_token": EOT,
                    "model_max_length": model.config.block_size, "clean_up_tokenization_spaces": False}
if "chat" in tokenizer_spec:
    tokenizer_config["chat_template"] = jinja_template(tokenizer_spec["chat"])
paths = [os.path.join(export_dir, name) for name in ("tokenizer.json", "tokenizer_config.json")]
with replaced_atomically(*paths, what="tokenizer") as [json_tmp, config_tmp]:
    with open(json_tmp, "w", encoding="utf-8") as f:
        f.write(hf_tokenizer(tokenizer_spec).to_str())
    with open(config_tmp, "w", encoding="utf-8") as f:
        json.dump(tokenizer_config, f, indent=2)
which = "GPT-2's BPE" if tokenizer_spec["tokenizer"] == "gpt2" else f"its BPE of {tokenizer_spec['vocab_size']} tokens"
print(f"wrote {paths[0]} and {paths[1]}: {which}{', with its chat template' if 'chat' in tokenizer_spec else ''}")
print(f"{'chat with' if 'chat' in tokenizer_spec else 'sample from'} it with: python "
      f"{'chat' if 'chat' in tokenizer_spec else 'sample'}.py --init_from={export_dir}")
