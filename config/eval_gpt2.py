# Evaluate OpenAI's gpt2 (124M parameters) on data/openwebtext without training:
#   python train.py config/eval_gpt2.py
# The data, once: python prepare.py --input=hf:Skylion007/openwebtext --tokenizer=gpt2 --val_fraction=0.0005
batch_size = 8
block_size = 1024  # GPT-2's whole context
eval_iters = 500  # use more iterations to get a good estimate
eval_only = True
wandb_log = False
init_from = "gpt2"
dataset = "openwebtext"
