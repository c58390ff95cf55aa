# A search for the best character-level Shakespeare model a 2-core CPU trains in the CPU recipe's time:
#   python prepare.py && python tune.py config/tune_shakespeare_char_cpu.py && python train.py out-tune/best.py
# Every trial trains for max_seconds, so that a small fast model and a big slow one get the same time, and
# evaluates every eval_interval steps, so that hopeless trials are pruned early.
dataset = "shakespeare_char"
device = "cpu"
max_seconds = 115  # a little less than config/shakespeare_char_cpu.py's 500 steps take on 2 cores
eval_interval = 100
eval_iters = 15
eval_at_start = False
always_save_checkpoint = False
log_interval = 50

bias = False
rotary = True
qk_norm = True
dropout = 0.0
n_head = 4
min_lr = 1e-4

# config/shakespeare_char_cpu.py's values of the settings searched: the first trial of a new study
learning_rate = 3e-3
muon_learning_rate = 0.05
muon_momentum = 0.9
n_layer = 3
n_embd = 128
attn_scale = 1.5
batch_size = 24
block_size = 128
warmup_iters = 20

trials = 40
timeout = 2700
search = {
    "learning_rate": (1.5e-3, 1e-2, "log"),  # AdamW's, for the embedding and the norm gains
    "muon_learning_rate": (0.03, 0.15, "log"),
    "muon_momentum": (0.8, 0.95),
    "n_layer": [2, 3, 4],
    "n_embd": [96, 128, 192],
    "attn_scale": (1.0, 2.0),
    "batch_size": [12, 16, 24, 32],
    "block_size": [64, 128, 192],
    "warmup_iters": [10, 20, 40],
}
