"""
train.py's checkpoints, out_dir/ckpt.pt: self-contained (weights, model shape, optimizer, progress, config and
tokenizer), written atomically, and read back with weights_only=True, so that a file can never run code.

- save_checkpoint, read_checkpoint: the file, whole or not at all; a one-line reason when it cannot be read.
- load_checkpoint: the model and its tokenizer on the CPU, for sample.py, export.py and bench.py.
- resume_settings: whether a checkpoint can resume with this run's settings, and which of them changed.
- training_state, load_training_state: the weights and the optimizer state by parameter name, whole tensors,
  so that a run saved by one process resumes under DDP or FSDP and the other way round.
- rng_states, restore_rng_states: every process's random number generators, for dropout.
"""

import os
from dataclasses import asdict

import torch
import torch.distributed as dist

from files import replaced_atomically
from model import GPT, GPTConfig

# what train.py saves, and needs to resume
TRAINING_KEYS = ("model", "model_args", "optimizer", "scaler", "iter_num", "best_val_loss", "best_iter", "config",
                 "tokenizer", "rng_cpu", "rng_cuda")
MODEL_KEYS = tuple(key for key in asdict(GPTConfig()) if key != "dropout")  # the model's shape and options
PRETRAINED_KEYS = tuple(key for key in MODEL_KEYS if key != "block_size")  # a pretrained model brings its own


def save_checkpoint(path, checkpoint):
    with replaced_atomically(path, what="checkpoint") as [tmp], open(tmp, "wb") as f:
        torch.save(checkpoint, f)  # through a Python file, whose errors say what went wrong


def read_checkpoint(path, required=("model", "model_args", "tokenizer"), device="cpu"):
    """The checkpoint at path as a dict; ValueError when it is missing, unreadable or lacks a required key."""
    if not os.path.exists(path):
        raise ValueError(f"no checkpoint at {path}: train a model first (python train.py), or point --out_dir at one")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # truncated, corrupted, a folder, or not a checkpoint at all
        raise ValueError(f"{path} is not a readable checkpoint ({type(e).__name__}); "
                         f"it may be truncated or corrupted") from None
    missing = sorted(set(required) - (checkpoint.keys() if isinstance(checkpoint, dict) else set()))
    if missing:
        raise ValueError(f"{path} was not written by this train.py (it lacks {', '.join(missing)})")
    return checkpoint


def load_checkpoint(path):
    """(model, tokenizer description) of the checkpoint at path, on the CPU; ValueError as read_checkpoint."""
    checkpoint = read_checkpoint(path)
    model = GPT(GPTConfig(**checkpoint["model_args"]))
    model.load_state_dict(checkpoint["model"])
    return model, checkpoint["tokenizer"]


def resume_settings(checkpoint, model_args, config, tokenizer):
    """
    (model_args, changes) for resuming checkpoint with this run's model_args, config and dataset's tokenizer:
    the tokenizer and the model must be the checkpoint's, or ValueError says how they differ (a pretrained
    model's shape is taken from the checkpoint); changes lists the other settings that differ.
    """
    if checkpoint["tokenizer"] != tokenizer:
        describe = lambda t: f"{t['tokenizer']}, {t['vocab_size']} tokens"
        raise ValueError(f"the checkpoint was trained with another tokenizer ({describe(checkpoint['tokenizer'])}) "
                         f"than data/{config['dataset']}'s ({describe(tokenizer)}); resume with the dataset it was "
                         f"trained on, or start a new --out_dir")
    # a checkpoint from before an architecture option existed was trained with GPTConfig's default for it
    saved_args = {**asdict(GPTConfig()), **checkpoint["model_args"]}
    if checkpoint.get("pretrained"):  # the shape came from the pretrained model, not from this config
        model_args = {**model_args, **{key: saved_args[key] for key in PRETRAINED_KEYS}}
    different = [f"{key}={saved_args[key]!r} (asked {model_args[key]!r})" for key in MODEL_KEYS
                 if saved_args[key] != model_args[key]]
    if different:
        raise ValueError(f"the checkpoint's model differs: {', '.join(different)}; "
                         f"use the settings it was trained with, or a new --out_dir")
    saved = checkpoint["config"]  # settings newer than the checkpoint are not changes
    changes = [f"{key} {saved[key]!r} -> {value!r}" for key, value in config.items()
               if key != "init_from" and key in saved and saved[key] != value]
    if bool(saved.get("muon_learning_rate")) != bool(config["muon_learning_rate"]):
        raise ValueError(f"muon_learning_rate {saved.get('muon_learning_rate', 0.0)!r} -> "
                         f"{config['muon_learning_rate']!r} would switch between AdamW and Muon, whose states differ; "
                         f"keep it on (or off) as it was, or start a new --out_dir")
    return model_args, changes


def training_state(model, optimizer, fsdp):
    """(model state, optimizer state), whole tensors, the optimizer's by parameter name as FSDP's are."""
    if fsdp:  # every process holds a shard: gather whole tensors onto the CPU, in every process together
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(model, options=options), get_optimizer_state_dict(model, optimizer, options=options)
    names = parameter_names(model, optimizer)
    state = optimizer.state_dict()  # parameters by their position in the groups
    return model.state_dict(), {
        "state": {names[i]: value for i, value in state["state"].items()},
        "param_groups": [dict(group, params=[names[i] for i in group["params"]]) for group in state["param_groups"]]}


def load_training_state(model, optimizer, optimizer_state, fsdp):
    """
    Load optimizer_state, as training_state gave it, into optimizer. The state (moments, momenta, steps) is the
    checkpoint's, the settings (weight decay, betas, momentum, learning rate scale) stay this run's.
    """
    settings = [{key: value for key, value in group.items() if key != "params"} for group in optimizer.param_groups]
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
        set_optimizer_state_dict(model, optimizer, optimizer_state, options=StateDictOptions(full_state_dict=True))
    else:
        position = {name: i for i, name in enumerate(parameter_names(model, optimizer))}
        optimizer.load_state_dict({
            "state": {position[name]: value for name, value in optimizer_state["state"].items()},
            "param_groups": [dict(group, params=[position[name] for name in group["params"]])
                             for group in optimizer_state["param_groups"]]})
    for group, setting in zip(optimizer.param_groups, settings):
        group.update(setting)


def parameter_names(model, optimizer):
    """The name of each of the optimizer's parameters, in the order of its groups (its state_dict's numbering)."""
    names = {p: name for name, p in model.named_parameters()}
    return [names[p] for group in optimizer.param_groups for p in group["params"]]


def rng_states(device):
    """{"rng_cpu": [...], "rng_cuda": [...]}: the RNG states of every process (all of them must call this)."""
    own = (torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.startswith("cuda") else None)
    states = [own]
    if dist.is_initialized():
        states = [None] * dist.get_world_size()
        dist.all_gather_object(states, own)
    return {"rng_cpu": [cpu for cpu, _ in states], "rng_cuda": [cuda for _, cuda in states if cuda is not None]}


def restore_rng_states(checkpoint, rank, device):
    """This process's RNG states from a checkpoint; a process beyond those saved takes one of theirs."""
    torch.set_rng_state(checkpoint["rng_cpu"][rank % len(checkpoint["rng_cpu"])].cpu())
    if device.startswith("cuda") and checkpoint["rng_cuda"]:
        torch.cuda.set_rng_state(checkpoint["rng_cuda"][rank % len(checkpoint["rng_cuda"])].cpu())
