"""
Train a GPT on the token ids that prepare.py wrote, on a CPU, one GPU, or many through torchrun.

    python train.py                                   # a small model on data/shakespeare_char, for a laptop CPU
    python train.py config/shakespeare_char_cpu.py    # the best character-level Shakespeare recipe for a CPU
    python train.py config/shakespeare_char.py        # the lecture's 6x6x384 Shakespeare model, for a GPU
    python train.py --init_from=resume                # continue from out_dir/ckpt.pt
    python train.py config/finetune_shakespeare.py    # finetune OpenAI's GPT-2 (124M) on Shakespeare
    python train.py config/eval_gpt2.py               # GPT-2's loss on data/openwebtext, without training
    torchrun --standalone --nproc_per_node=4 train.py # data-parallel over 4 processes (GPUs, or CPU with gloo)

Every setting is a module-level value below; config files, then --key=value flags, override them (see
smallgpt/configurator.py). out_dir gets ckpt.pt (smallgpt/checkpoint.py), metrics.jsonl and loss.png
(smallgpt/metrics.py).
"""

import math
import os
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from smallgpt.budget import TimeBudget
from smallgpt.checkpoint import mark_stopped_early, start_model
from smallgpt.configurator import configure
from smallgpt.dataset import chat_rows, check_ids, loss_sums, open_dataset
from smallgpt.devices import end_run, is_master_process, launched_by_torchrun, peak_flops, start_run
from smallgpt.errors import UserError
from smallgpt.files import make_dir
from smallgpt.hellaswag import hellaswag_accuracy, hellaswag_share, load_examples
from smallgpt.hf_format import check_init_from
from smallgpt.interrupts import catch_stop_signals, stop_requested
from smallgpt.metrics import MetricsLog, format_duration, run_title
from smallgpt.tokenizer import model_vocab_size, token_bytes
from smallgpt.training_state import restore_training, save_training

# -----------------------------------------------------------------------------
# default config values: a small character-level model that trains in a few minutes on a laptop CPU
# I/O
out_dir = "out"
eval_interval = 250  # [1, inf)
eval_at_start = True  # evaluate before the first step too (the starting loss); False: from the first interval on
log_interval = 10  # [1, inf)
eval_iters = 20  # [1, inf): batches per split in each loss estimate
eval_only = False  # evaluate once and exit
always_save_checkpoint = True  # save at every eval, not only when val loss improves
patience = 0  # [0, inf): stop once val loss has not improved in this many evaluations, ckpt.pt the best (0: off)
eval_hellaswag = 0  # [0, inf): HellaSwag examples scored at each eval, their acc_norm logged (see eval.py)
hellaswag_file = ""  # a HellaSwag-format .jsonl (path or URL); empty: the validation split, downloaded once
init_from = "scratch"  # 'scratch', 'resume' (out_dir/ckpt.pt), 'gpt2'...'gpt2-xl', a Hugging Face folder, a ckpt.pt
# wandb logging
wandb_log = False
wandb_project = "owt"
wandb_run_name = "gpt2"
# data
dataset = "shakespeare_char"  # reads data/DATASET/{train,val}.bin and meta.json
gradient_accumulation_steps = 1  # [1, inf): micro-batches per step, summed over all processes
batch_size = 12  # [1, inf): sequences per micro-batch
block_size = 64  # [1, inf): tokens per sequence
# model
n_layer = 4  # [0, inf): transformer blocks; 0: the bigram model, a table of logits (config/bigram.py)
n_head = 4  # [1, inf)
n_embd = 128  # [1, inf)
dropout = 0.0  # [0, 1): 0 for pretraining, 0.1+ for finetuning or small data
bias = False  # biases in Linears and LayerNorms
activation = "gelu"  # one of gelu_tanh, gelu: the MLP's, GPT-2's approximation or exact
rotary = False  # rotary position embeddings instead of learned ones
qk_norm = False  # RMSNorm on queries and keys
attn_scale = 1.0  # (0, inf): attention logits times this (above 1: sharper attention, for qk_norm)
# optimizer: AdamW, or Muon for the transformer blocks' matrices and AdamW for the rest
learning_rate = 1e-3  # [0, inf): max learning rate (AdamW's)
muon_learning_rate = 0.0  # [0, inf): above 0: Muon, at this max learning rate, for the blocks' matrices
muon_momentum = 0.95  # [0, 1)
max_iters = 2000  # [0, inf): total optimizer steps
max_seconds = 0.0  # [0, inf): train for this many seconds instead, the schedule fitted to the steps that fit
weight_decay = 1e-1  # [0, inf)
beta1 = 0.9  # [0, 1)
beta2 = 0.99  # [0, 1)
grad_clip = 1.0  # [0, inf): clip gradients at this norm, 0.0 to disable
# learning rate schedule
decay_lr = True  # warm up, then cosine-decay to min_lr; False: constant learning_rate
warmup_iters = 100  # [0, inf)
lr_decay_iters = 2000  # [0, inf): ~= max_iters per Chinchilla
min_lr = 1e-4  # [0, inf): ~= learning_rate / 10 per Chinchilla
# LoRA finetuning (smallgpt/lora.py): adapters of lora_rank on lora_targets' matrices train, every other weight frozen
lora_rank = 0  # [0, inf): 0: off
lora_alpha = 16.0  # (0, inf): the adapters' update is scaled by lora_alpha / lora_rank
lora_dropout = 0.0  # [0, 1)
lora_targets = "attn.c_attn,attn.c_proj,mlp.c_fc,mlp.c_proj"
# system
backend = "auto"  # one of auto, nccl, gloo, mpi, ucc, xccl: torch.distributed's; auto: nccl on CUDA
device = "auto"  # 'auto' (cuda, then mps, then cpu), 'cpu', 'cuda', 'cuda:1', 'mps'
dtype = "auto"  # one of auto, float32, bfloat16, float16: auto: bfloat16 on CUDA where it runs, else float16
compile = None  # one of None, True, False: torch.compile the model; None: on for CUDA, off elsewhere
fsdp = False  # under torchrun, shard parameters, gradients and optimizer state over the processes (FSDP2)
activation_checkpointing = False  # recompute each block in the backward pass instead of keeping its activations
chunked_loss = False  # the head and the loss over chunks of tokens, so the whole logits never exist (less memory)
seed = 1337  # [0, 4294967295]
# -----------------------------------------------------------------------------
config = configure(globals(), sys.argv[1:])  # checked; and a UserError is one line on stderr
globals().update(config)
# -----------------------------------------------------------------------------
# the settings that depend on each other, and the data, checked before anything slow happens

check_init_from(init_from, {"scratch": None, "resume": None})
if n_layer and n_embd % n_head != 0:  # the bigram has no heads
    raise UserError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head}): "
                    f"each head gets n_embd // n_head channels")
if rotary and n_embd // n_head % 2:
    raise UserError(f"rotary=True turns channels in pairs: "
                    f"the head size n_embd // n_head ({n_embd // n_head}) must be even")
if fsdp and muon_learning_rate:
    raise UserError("fsdp=True cannot train with Muon, which needs each matrix whole: "
                    "use DDP (fsdp=False) or muon_learning_rate=0")
torchrun = launched_by_torchrun()  # several processes, each training on a share of every step (DDP or FSDP)
if fsdp and not torchrun:
    raise UserError("fsdp=True shards the model over several processes: "
                    "launch with torchrun --nproc_per_node=N train.py ...")
data_dir, tokenizer_spec = open_dataset(dataset, block_size)

# Ctrl-C or SIGTERM: finish the current step, save a checkpoint and exit (see smallgpt/interrupts.py)
catch_stop_signals(announce=is_master_process())

# -----------------------------------------------------------------------------
# processes and devices: the same seed, so the same initial weights, in every process (FSDP shards them as they are)

device, dtype, autocast, rank, world_size = start_run(device, dtype, seed, backend)  # smallgpt/devices.py
device_type = device.split(":")[0]
master_process = rank == 0  # logs and writes checkpoints
if fsdp and dtype == "float16":
    raise UserError("fsdp=True trains in bfloat16 or float32: use --dtype=bfloat16 "
                    "(float16 would need a sharded gradient scaler)")
if gradient_accumulation_steps % world_size != 0 and batch_size % world_size != 0:
    raise UserError(f"gradient_accumulation_steps ({gradient_accumulation_steps}) must be divisible by the "
                    f"number of processes ({world_size}), or else batch_size ({batch_size}) must be")
# Each step trains on gradient_accumulation_steps x batch_size sequences in all, shared out among the
# processes: each process takes a share of the micro-batches; where they do not divide,
# each process takes a share of every micro-batch instead (so that the default runs under torchrun too).
if gradient_accumulation_steps % world_size == 0:
    micro_steps, micro_batch = gradient_accumulation_steps // world_size, batch_size
else:
    micro_steps, micro_batch = gradient_accumulation_steps, batch_size // world_size
tokens_per_iter = gradient_accumulation_steps * batch_size * block_size
compile = device_type == "cuda" if compile is None else compile
if master_process:
    make_dir(out_dir, "out_dir")
    print(f"device {device}, dtype {dtype}, {world_size} process(es){' (FSDP)' if fsdp else ''}, compile {compile}")
    print(f"tokens per iteration will be: {tokens_per_iter:,}")

byte_lengths = torch.tensor(token_bytes(tokenizer_spec), device=device)  # of each token id's text, for bits per byte
hellaswag = None  # this process's share of the HellaSwag examples, tokenized, if they are to be scored
if eval_hellaswag:
    hellaswag = hellaswag_share(load_examples(hellaswag_file, eval_hellaswag, rank), tokenizer_spec, rank, world_size)

# -----------------------------------------------------------------------------
# data: random windows of block_size + 1 tokens, drawn from a seeded generator keyed by what the batch is for,
# so that a batch never depends on how many processes share it or on where a run was resumed

SPLIT_STREAMS = {"train": 0, "val": 1, "train_eval": 2}


def get_batch(split, n, batch_index):
    """n sequences (x, y) of split: the same split and batch_index give the same batch."""
    # a fresh memmap per batch: a long-lived one grows in memory (https://stackoverflow.com/q/45132940)
    path = os.path.join(data_dir, "val.bin" if split == "val" else "train.bin")
    data = np.memmap(path, dtype=np.uint16, mode="r")
    rng = np.random.default_rng([seed, SPLIT_STREAMS[split], batch_index])
    if "chat" in tokenizer_spec:  # conversations: rows from their starts, targets -1 but the replies' (dataset.py)
        x, y = chat_rows(data, path.replace(".bin", "_mask.bin"), rng, n, block_size)
    else:
        starts = rng.integers(0, len(data) - block_size, size=n)
        windows = data[starts[:, None] + np.arange(block_size + 1)]  # (n, T+1)
        x, y = windows[:, :-1].astype(np.int64), windows[:, 1:].astype(np.int64)
    check_ids(path, tokenizer_spec["vocab_size"], x, y)  # cheap, and an id beyond would crash the model
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    if device_type == "cuda":
        # pinned memory lets the copy to the GPU run alongside the computation
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


def train_batches(iter_num):
    """This process's micro-batches, step after step: a slice of the step's global batch each, and the share by
    which its summed loss counts in the step's: the mean over all the step's tokens trained on."""
    while True:
        global_batch = get_batch("train", gradient_accumulation_steps * batch_size, iter_num)
        share = world_size / (global_batch[1] != -1).sum().clamp(min=1)  # DDP and FSDP average the gradients
        for micro_step in range(micro_steps):
            first = (rank * micro_steps + micro_step) * micro_batch
            part = slice(first, first + micro_batch)
            yield global_batch[0][part], global_batch[1][part], share
        iter_num += 1


# -----------------------------------------------------------------------------
# model and optimizer

model_args = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size, bias=bias,
                  vocab_size=model_vocab_size(tokenizer_spec), dropout=dropout, activation=activation, rotary=rotary,
                  qk_norm=qk_norm, attn_scale=attn_scale)
ckpt_path = os.path.join(out_dir, "ckpt.pt")
pretrained = None if init_from in ("scratch", "resume") else init_from  # where the weights started, if not random
iter_num, best_val_loss, best_iter = 0, float("inf"), 0  # best_iter: the iteration of best_val_loss
# a new model, the checkpoint's to resume, or GPT-2's weights or a Hugging Face folder's (smallgpt/checkpoint.py)
model, model_args, checkpoint, lora = start_model(init_from, model_args, ckpt_path, config, tokenizer_spec,
                                                  data_dir, verbose=master_process)
model.activation_checkpointing, model.chunked_loss = activation_checkpointing, chunked_loss
if checkpoint is not None:
    pretrained, iter_num = checkpoint.get("pretrained"), checkpoint["iter_num"]
    best_val_loss, best_iter = checkpoint["best_val_loss"], checkpoint["best_iter"]
budget = TimeBudget(max_seconds, eval_interval, device, checkpoint and checkpoint.get("budget"), iter_num)
if budget.steps:  # a resumed run goes on to the end fitted to its time, in the time left
    max_iters = lr_decay_iters = budget.steps
torch.manual_seed(seed + rank)  # the same initial weights in every process, but different dropout masks
model.to(device)
if fsdp:  # each block's weights, gradients and optimizer state split over the processes, then the rest's
    from torch.distributed.fsdp import fully_shard  # imported only here: it takes a while to import
    for module in (*model.transformer.h, model):
        fully_shard(module)  # gathered whole only while it computes

# fp16 needs its gradients scaled up to stay representable; a no-op for other dtypes
scaler = torch.amp.GradScaler(device_type, enabled=dtype == "float16" and device_type != "mps")
optimizer = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type,
                                       0.0 if lora else muon_learning_rate, muon_momentum)  # LoRA: AdamW alone
if checkpoint is not None:
    restore_training(checkpoint, model, optimizer, scaler, rank, device, fsdp)
checkpoint = None  # free the memory

raw_model = model  # what gets saved: never the compiled or DDP wrapper
if compile:
    model = torch.compile(model)  # compiles at the first call: the first evaluation and step take longer
if torchrun and not fsdp:
    model = DDP(model, device_ids=[torch.device(device)] if device_type == "cuda" else None)


@torch.no_grad()
def estimate_loss():
    """Mean loss and bits per byte of text over eval_iters fixed batches per split, shared out among the processes."""
    losses, bpb = {}, {}
    model.eval()
    for name, split in (("train", "train_eval"), ("val", "val")):
        sums = torch.zeros(4, device=device)  # the loss of each token, of those with bytes, their bytes, how many
        # every process runs as many forward passes, which FSDP needs; batches past eval_iters count for nothing
        for k in range(rank, math.ceil(eval_iters / world_size) * world_size, world_size):
            X, Y = get_batch(split, batch_size, k % eval_iters)
            with autocast:
                _, token_losses = model(X, Y, loss_reduction="none")
            sums += torch.stack(loss_sums(token_losses.float(), Y, byte_lengths)) * (k < eval_iters)
        if torchrun:
            dist.all_reduce(sums)
        loss, nats, nbytes, count = sums.tolist()
        losses[name], bpb[name] = loss / max(count, 1), nats / math.log(2) / max(nbytes, 1)
    model.train()
    return losses, bpb


def get_lr(it):
    """Linear warmup for warmup_iters, then cosine decay to min_lr at lr_decay_iters (max_seconds: the budget's), then
    min_lr."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it >= lr_decay_iters:  # also when the warmup reaches the horizon
        return min_lr
    decay_ratio = budget.progress(it) if budget.steps else (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))  # from 1 down to 0
    return min_lr + coeff * (learning_rate - min_lr)


def write_checkpoint():
    """Save ckpt.pt: every process takes part (FSDP gathers the shards), rank 0 writes."""
    save_training(ckpt_path, raw_model, optimizer, scaler, fsdp, device, master_process, model_args=model_args,
                  iter_num=iter_num, best_val_loss=best_val_loss, best_iter=best_iter, config=config,
                  tokenizer=tokenizer_spec, pretrained=pretrained, lora=lora, **budget.saved())
    if master_process:
        print(f"saving checkpoint to {ckpt_path}")


def check_finite(loss, what):
    """Stop on a non-finite loss, before it trains further or gets saved over the last good checkpoint."""
    if not math.isfinite(loss):
        last = f"the last good checkpoint is {ckpt_path}" if os.path.exists(ckpt_path) else "no checkpoint was saved"
        raise UserError(f"{what} is {loss} at iter {iter_num}: training diverged; {last}. "
                        f"Try a lower learning_rate, or a lower grad_clip (0: none)")


# -----------------------------------------------------------------------------
# training loop

metrics = None  # rank 0 records the run (metrics.jsonl, loss.png, wandb), unless it only evaluates
if master_process and not eval_only:
    metrics = MetricsLog(out_dir, iter_num if init_from == "resume" else None, run_title(dataset, raw_model),
                         (wandb_project, wandb_run_name, config) if wandb_log else None)
peak = peak_flops(device, dtype) if master_process else 0.0
batches = train_batches(iter_num)
X, Y, share = next(batches)  # fetch the very first batch
run_start = t0 = budget.start = time.time()
local_iter_num = 0  # iterations in this process's lifetime
stopped_early, running_mfu = False, -1.0  # stopped_early: patience ran out
while True:
    lr = get_lr(iter_num) if decay_lr else learning_rate
    for param_group in optimizer.param_groups:
        param_group["lr"] = lr * param_group.get("lr_scale", 1.0)  # Muon's group keeps its ratio to AdamW's rate

    # evaluate the loss on train/val sets and write checkpoints
    at_interval = iter_num % eval_interval == 0 and (local_iter_num > 0 or eval_at_start)
    if at_interval or iter_num == max_iters or eval_only:
        eval_start = time.time()
        losses, bpb = estimate_loss()  # bpb: bits per byte of the UTF-8 text, which compare across tokenizers
        check_finite(losses["val"], "val loss")
        improved = losses["val"] < best_val_loss and not eval_only
        if improved:
            best_val_loss, best_iter = losses["val"], iter_num
        # how often the model picks the right ending of HellaSwag's sentences (smallgpt/hellaswag.py)
        hellaswag_acc = hellaswag_accuracy(raw_model, hellaswag, autocast, fsdp)["acc_norm"] if hellaswag else None
        if master_process:
            print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}, "
                  f"val bpb {bpb['val']:.3f}" + (f", hellaswag acc_norm {hellaswag_acc:.4f}" if hellaswag else ""))
        if metrics:
            metrics.log(kind="eval", iter=iter_num, tokens=iter_num * tokens_per_iter, train_loss=losses["train"],
                        val_loss=losses["val"], train_bpb=bpb["train"], val_bpb=bpb["val"], lr=lr,
                        hellaswag_acc_norm=hellaswag_acc)
        if (improved or always_save_checkpoint and not patience) and (iter_num or pretrained) and not eval_only:
            write_checkpoint()  # a finetune's start is a model too, saved if nothing beats it; a new model's is noise
        stopped_early = patience and iter_num - best_iter >= patience * eval_interval and not eval_only
        budget.evaluated(time.time() - eval_start)
    if iter_num >= max_iters or eval_only or stopped_early:
        break

    # forward, backward, update, with gradient accumulation over micro_steps micro-batches
    loss_sum = torch.zeros((), device=device)
    for micro_step in range(micro_steps):
        # synchronize gradients only at the last micro-step: the others would be wasted traffic
        if fsdp:
            raw_model.set_requires_gradient_sync(micro_step == micro_steps - 1)
        elif torchrun:
            model.require_backward_grad_sync = micro_step == micro_steps - 1
        with autocast:
            logits, loss = model(X, Y, loss_reduction="sum")
            loss = loss * share  # its part of the mean over the step's trained tokens (all of them, but in chats)
        X, Y, share = next(batches)  # fetch the next batch while the model works on this one (async on CUDA)
        scaler.scale(loss).backward()
        loss_sum += loss.detach()
    if grad_clip != 0.0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)

    # timing and logging
    t1 = time.time()
    dt = t1 - t0
    t0 = t1
    if local_iter_num == 0:
        first_step_end = t1  # the time left is estimated without the first step, which carries start-up
        if compile and master_process:
            print(f"compiled: the first evaluation and step took {t1 - run_start:.1f}s")
    if max_seconds and budget.due(local_iter_num) and budget.fit(iter_num + 1, master_process):
        max_iters = lr_decay_iters = budget.steps  # the schedule's end fitted to the time left
    if iter_num % log_interval == 0:
        if torchrun:
            dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
        lossf = loss_sum.item()  # a CPU-GPU sync point
        check_finite(lossf, "loss")
        if master_process:
            if local_iter_num >= 5:  # let the training loop settle a bit
                mfu = raw_model.estimate_mfu(micro_batch * micro_steps, dt, peak)
                running_mfu = mfu if running_mfu == -1.0 else 0.9 * running_mfu + 0.1 * mfu
            eta = ""
            if local_iter_num:  # no estimate after the first step alone, whose time is mostly start-up
                seconds_left = (t1 - first_step_end) / local_iter_num * (max_iters - iter_num - 1)
                eta = f", eta {format_duration(seconds_left)}"
            print(f"iter {iter_num}: loss {lossf:.4f}, time {dt * 1000:.2f}ms, mfu {running_mfu * 100:.2f}%{eta}")
            metrics.log(kind="iter", iter=iter_num, tokens=(iter_num + 1) * tokens_per_iter, train_loss=lossf, lr=lr,
                        tokens_per_sec=round(tokens_per_iter / dt), mfu=round(max(running_mfu, 0.0), 4))
    iter_num += 1
    local_iter_num += 1
    if stop_requested(device):  # all processes agree, since each takes part in saving
        write_checkpoint()
        if master_process:
            print(f"interrupted at iter {iter_num}: checkpoint saved to {ckpt_path}; "
                  f"continue with --init_from=resume")
        break

if stopped_early and master_process:  # ckpt.pt holds the best evaluation's weights; a resume asks before going on
    mark_stopped_early(ckpt_path, iter_num, patience, config["max_iters"])  # as asked, not as fitted to max_seconds
    print(f"early stop at iter {iter_num}: no better val loss in {patience} evaluations; "
          f"best val loss {best_val_loss:.4f} at iter {best_iter}")
    metrics.log(kind="early_stop", iter=iter_num, best_iter=best_iter, best_val_loss=best_val_loss)
if metrics:
    metrics.close()
if master_process and local_iter_num > 0:
    wall = time.time() - run_start
    print(f"done: best val loss {best_val_loss:.4f} at iter {best_iter}, {format_duration(wall)}, "
          f"{local_iter_num * tokens_per_iter / wall:,.0f} tokens/s")
end_run()
