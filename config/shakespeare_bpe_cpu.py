# Tiny Shakespeare in a byte-level BPE of 1024 tokens learned from its training split, trained on a CPU in the
# time the default config takes:
#   python prepare.py --tokenizer=bpe && python train.py config/shakespeare_bpe_cpu.py
# config/shakespeare_char_cpu.py's recipe (Muon, rotary embeddings, QK-norm, sharper attention) on BPE tokens,
# with 2 layers instead of 3 and more steps: bench.py --part=tokenizers compares it with the other tokenizers.

# out_dir stays 'out' so that a plain `python sample.py` finds the model
eval_interval = 700  # evaluate at the end only: evaluations take time from training
eval_at_start = False
eval_iters = 20
log_interval = 10
always_save_checkpoint = False

dataset = "shakespeare_bpe"
batch_size = 24
block_size = 128  # tokens: about 310 characters of context

n_layer = 2
n_head = 4
n_embd = 128
dropout = 0.0
bias = False
rotary = True
qk_norm = True
attn_scale = 1.5

learning_rate = 3e-3  # AdamW's, for the embedding (which is also the output layer) and the norm gains
muon_learning_rate = 0.05
muon_momentum = 0.9
max_iters = 700
lr_decay_iters = 700
warmup_iters = 20
min_lr = 1e-4
