# GPT-2 (124M) from scratch, on about 300B tokens, for a machine of 8 GPUs.
# The data: GPT-2 BPE token ids in data/openwebtext/{train,val}.bin, e.g. from your own corpus with
#   python prepare.py --input=corpus.txt --tokenizer=gpt2 --dataset=openwebtext
# then: torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py

wandb_log = False
wandb_project = "owt"
wandb_run_name = "gpt2-124M"

dataset = "openwebtext"
# 12 sequences * 1024 tokens * 40 micro-batches = ~0.5M tokens per step (over all GPUs)
batch_size = 12
block_size = 1024
gradient_accumulation_steps = 5 * 8

n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0
bias = False

learning_rate = 6e-4
max_iters = 600000  # 300B tokens
lr_decay_iters = 600000
min_lr = 6e-5
warmup_iters = 2000
weight_decay = 1e-1
beta2 = 0.95

eval_interval = 1000
eval_iters = 200
log_interval = 10
always_save_checkpoint = True
