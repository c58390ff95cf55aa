# nanoGPT's miniature character-level Shakespeare model (the "Let's build GPT" lecture's 6x6x384),
# sized for a GPU: python prepare.py && python train.py config/shakespeare_char.py
# On a CPU, shrink it as nanoGPT's README does:
#   python train.py config/shakespeare_char.py --device=cpu --compile=False --eval_iters=20 --log_interval=1
#     --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0

# out_dir stays 'out' (nanoGPT: out-shakespeare-char) so that a plain `python sample.py` finds the model
eval_interval = 250  # evaluate often: this small model overfits
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

learning_rate = 1e-3  # with baby networks a bit higher is fine
max_iters = 5000
lr_decay_iters = 5000  # usually equal to max_iters
min_lr = 1e-4  # learning_rate / 10
beta2 = 0.99  # a bit bigger because there are few tokens per iteration
warmup_iters = 100
