# A character-level Shakespeare model for a CPU, tuned by hand, in the time the default config takes (tune.py's
# search from config/tune_shakespeare_char_cpu.py finds settings that beat it: see the README's "Tuning"):
#   python prepare.py && python train.py config/shakespeare_char_cpu.py
# Beyond the default (bench.py --part=ablation takes out one part at a time; see docs/measurements.md):
# - Muon for the transformer blocks' matrices (AdamW for the embedding and gains): far more progress per step;
# - rotary position embeddings and QK-norm, with attention logits above the usual scale;
# - 3 layers instead of 4; sequences of 128 characters in batches of 24, so 500 steps see as many
#   characters as the default's 2000 steps of 12 x 64.

# out_dir stays 'out' so that a plain `python sample.py` finds the model
eval_interval = 500  # evaluate at the end only: evaluations take time from training
eval_at_start = False  # the loss at the start is ln(65) = 4.17
eval_iters = 20
log_interval = 10
always_save_checkpoint = False

dataset = "shakespeare_char"
batch_size = 24
block_size = 128

n_layer = 3
n_head = 4
n_embd = 128
dropout = 0.0
bias = False
rotary = True
qk_norm = True
attn_scale = 1.5  # QK-norm caps the logits at sqrt(head size) = 5.7, too flat for 4 heads of 32

learning_rate = 3e-3  # AdamW's, for the embedding (which is also the output layer) and the norm gains
muon_learning_rate = 0.05
muon_momentum = 0.9
max_iters = 500
lr_decay_iters = 500
warmup_iters = 20
min_lr = 1e-4
