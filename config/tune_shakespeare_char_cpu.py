# A search for the best character-level Shakespeare model a 2-core CPU trains in the CPU recipe's time:
#   python prepare.py && python tune.py config/tune_shakespeare_char_cpu.py && python train.py out-tune/best.py
# Every trial trains for max_seconds, so that a small fast model and a big slow one get the same time, and
# evaluates every eval_interval steps, so that hopeless trials are pruned early.
dataset = "shakespeare_char"
device = "cpu"
max_seconds = 123  # every trial the same time: set it to what your own recipe trains for
eval_interval = 125
eval_iters = 20  # the recipe's: the last evaluation scores the batches that the recipe's does
eval_at_start = False
always_save_checkpoint = False
log_interval = 50

bias = False
rotary = True
qk_norm = True
dropout = 0.0
n_head = 4
n_embd = 128
block_size = 128
min_lr = 1e-4

# config/shakespeare_char_cpu.py's values of the settings searched: the first trial of a new study
learning_rate = 3e-3
muon_learning_rate = 0.05
muon_momentum = 0.9
weight_decay = 0.1
attn_scale = 1.5
warmup_iters = 20
n_layer = 3
batch_size = 24

trials = 60
prune_after = 8  # the median of fewer complete trials is a noisy bar, and the first trials are random draws
timeout = 3540  # an hour in all, with the start and the results written at the end
# the optimizer's settings, which the hand tuning set by feel, and the trade of depth and batch against steps
search = {
    "learning_rate": (1.5e-3, 1e-2, "log"),  # AdamW's, for the embedding and the norm gains
    "muon_learning_rate": (0.025, 0.1, "log"),
    "muon_momentum": (0.8, 0.95),
    "weight_decay": (0.0, 0.4),  # decoupled, on the matrices: Muon's too
    "attn_scale": (1.0, 2.0),
    "warmup_iters": [10, 20, 40],
    "n_layer": [2, 3, 4],
    "batch_size": [16, 24, 32],
}
