# Finetune OpenAI's GPT-2 (124M) on Tiny Shakespeare:
#   python prepare.py --tokenizer=gpt2 && python train.py config/finetune_shakespeare.py
#   python sample.py --start="ROMEO:"
# Made for a GPU; init_from='gpt2-xl' (1.5B) needs a big one.

# out_dir stays 'out' so that a plain `python sample.py` finds the model
eval_interval = 5
eval_iters = 40
log_interval = 1
wandb_log = False  # feel free to turn on
wandb_project = "shakespeare"
wandb_run_name = "ft-gpt2"

dataset = "shakespeare"  # GPT-2 tokens: python prepare.py --tokenizer=gpt2
init_from = "gpt2"  # the smallest GPT-2; or gpt2-medium, gpt2-large, gpt2-xl
block_size = 1024  # GPT-2's whole context (this repository's default is a small model's 64)

# only save checkpoints if the validation loss improves
always_save_checkpoint = False

# the number of examples per iter:
# 1 batch_size * 32 grad_accum * 1024 tokens = 32,768 tokens/iter
# data/shakespeare's train split is about 9 such iterations
batch_size = 1
gradient_accumulation_steps = 32
max_iters = 20

# finetune at constant LR
learning_rate = 3e-5
decay_lr = False
beta2 = 0.95  # GPT-2's
