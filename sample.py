"""
Sample text from a model that train.py trained, or from OpenAI's GPT-2.

    python sample.py --start="ROMEO:"                        # 10 samples of 500 tokens from out/ckpt.pt
    python sample.py --start=FILE:prompt.txt --num_samples=1  # the prompt is the text of prompt.txt
    python sample.py --out_dir=out-big --temperature=0.5 --top_p=0.9 --seed=7
    python sample.py --init_from=gpt2-xl --start="What is the answer to life?" --num_samples=3
    python sample.py --init_from=path/to/folder              # a model in Hugging Face's GPT-2 format
    # GPT-2's weights are downloaded from the Hugging Face Hub, which caches them; they use GPT-2's BPE, and so
    # does a folder, unless it holds the tokenizer.json of a BPE that export.py wrote

The checkpoint carries the model and its tokenizer, so out_dir is all this needs: the data folder may
be gone. Each sample is printed, then a separator line; a single sample is printed as
it is generated. The same seed gives the same text on the same machine.
"""

import sys

import torch

from smallgpt.checkpoint import load_model
from smallgpt.configurator import configure
from smallgpt.devices import start_run
from smallgpt.errors import UserError
from smallgpt.files import read_text
from smallgpt.sampling import Penalties, ready_to_generate, whole_texts
from smallgpt.tokenizer import make_codec

# -----------------------------------------------------------------------------
init_from = "resume"  # 'resume' (out_dir/ckpt.pt), 'gpt2'...'gpt2-xl', a Hugging Face GPT-2 folder, a ckpt.pt
out_dir = "out"  # where train.py wrote ckpt.pt
start = "\n"  # the prompt, or FILE:path to read it from a file
num_samples = 10  # [1, inf): how many samples to draw
max_new_tokens = 500  # [0, inf): tokens generated per sample
temperature = 0.8  # (0, inf); for nearly greedy sampling use e.g. 0.01 or --top_k=1: < 1: more conservative
top_k = 200  # [0, inf): sample among the top_k most likely tokens only; 0 for all
top_p = 1.0  # (0, 1]: sample among the most likely tokens that make up top_p of the probability; 1.0 for all
min_p = 0.0  # [0, 1]: sample among the tokens at least min_p times as likely as the most likely one; 0.0 for all
# against a sample that loops (smallgpt/sampling.py), over the tokens the model sees: 1.0 and 0.0 are off
repetition_penalty = 1.0  # (0, inf): a seen token's logit divided by it where positive, multiplied where negative
frequency_penalty = 0.0  # (-inf, inf); must be a finite number: taken off a seen token's logit per time it was seen
presence_penalty = 0.0  # (-inf, inf); must be a finite number: taken off a seen token's logit once
seed = 1337  # [0, 4294967295]
device = "auto"  # 'auto' (cuda, then mps, then cpu), 'cpu', 'cuda', 'cuda:1', 'mps'
dtype = "auto"  # one of auto, float32, bfloat16, float16: auto: bfloat16 on CUDA where it runs, else float16
compile = False  # torch.compile the model (pays off for long samples only)
# -----------------------------------------------------------------------------
globals().update(configure(globals(), sys.argv[1:]))
# -----------------------------------------------------------------------------

if start.startswith("FILE:"):
    start = read_text(start[len("FILE:"):], "prompt file")
if not start:
    raise UserError("the prompt is empty: give at least one character with --start=")

device, dtype, autocast, _, _ = start_run(device, dtype, seed)  # smallgpt/devices.py

model, tokenizer_spec = load_model(init_from, out_dir)
model = ready_to_generate(model, device, dtype, compile)  # on a CPU, laid out as it samples fastest

encode, decode = make_codec(tokenizer_spec)
try:
    start_ids = encode(start)
except ValueError as e:
    raise UserError(f"the prompt cannot be encoded with this model's tokenizer: {e}") from None
x = torch.tensor(start_ids, dtype=torch.long, device=device)[None, ...]  # (1, T)


def print_as_generated(tokens):
    """Print the text of each new token as soon as it is whole (smallgpt/sampling.py), starting with the prompt."""
    for text in whole_texts((token.item() for token in tokens), decode, pending=x[0].tolist()):
        print(text, end="", flush=True)
    print()


penalties = Penalties(repetition_penalty, frequency_penalty, presence_penalty)
with torch.no_grad(), autocast:
    for k in range(num_samples):
        tokens = model.generate_stream(x, max_new_tokens, temperature=temperature, top_k=top_k or None, top_p=top_p,
                                       min_p=min_p, penalties=penalties,
                                       tokenizer_vocab_size=tokenizer_spec["vocab_size"])
        if num_samples == 1:  # one sample: show the text as it is written
            print_as_generated(tokens)
        else:
            print(decode(torch.cat([x, *tokens], dim=1)[0].tolist()))
        print("---------------")
