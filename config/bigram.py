# The lecture's first model, the bigram: each character's next-character logits read off a (65, 65) table, no
# attention and no positions; the baseline that shows what attention buys.
#   python prepare.py && python train.py config/bigram.py && python sample.py --out_dir=out-bigram
out_dir = "out-bigram"
n_layer = 0  # no blocks: the token embedding is the table of logits
batch_size = 32
block_size = 8
learning_rate = 1e-2
min_lr = 1e-3
weight_decay = 0.0
max_iters = 3000
lr_decay_iters = 3000
warmup_iters = 0
eval_interval = 500
eval_iters = 100
log_interval = 500
