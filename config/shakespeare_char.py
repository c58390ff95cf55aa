# The "Let's build GPT" lecture's 6x6x384 character-level model on Tiny Shakespeare, trained for a GPU:
#   python prepare.py && python train.py config/shakespeare_char.py
# Muon for the blocks' matrices, rotary embeddings and QK-norm (as config/shakespeare_char_cpu.py), which
# take it to its best val loss in 1000 steps.

# out_dir stays 'out' so that a plain `python sample.py` finds the model
eval_interval = 500  # at the start, halfway and the end
eval_iters = 200
log_interval = 10
always_save_checkpoint = False  # only save when val improves

wandb_project = "shakespeare-char"
wandb_run_name = "mini-gpt"

dataset = "shakespeare_char"
gradient_accumulation_steps = 1
batch_size = 64
block_size = 256  # context of up to 256 previous characters

n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2
rotary = True
qk_norm = True

learning_rate = 1e-3  # AdamW's, for the embedding (which is also the output layer) and the norm gains
muon_learning_rate = 0.03
max_iters = 1000  # the val loss is lowest about here; further steps overfit
lr_decay_iters = 1000  # usually equal to max_iters
min_lr = 1e-4  # learning_rate / 10
beta2 = 0.99  # a bit bigger because there are few tokens per iteration
warmup_iters = 100

compile = False  # for this small model and so few steps, compiling costs more time than it saves
