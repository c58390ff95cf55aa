"""
What train.py saves of a run beside its model, and restores on a resume: the optimizer and gradient scaler states
and every process's random number generators, as they were.

- save_training: a run's ckpt.pt; every process takes part (FSDP gathers the shards), rank 0 writes.
- restore_training: a resumed run's optimizer, gradient scaler and random number generators, as they were.
The weights and the optimizer state are kept by parameter name, as whole tensors, so that a run saved by one
process resumes under DDP or FSDP and the other way round.
"""

import torch
import torch.distributed as dist

from smallgpt.checkpoint import RUN_KEYS, save_checkpoint
from smallgpt.lora import adapter_state


def save_training(path, model, optimizer, scaler, fsdp, device, master_process, lora=None, **run):
    """
    Save a run's ckpt.pt at path: the weights (with lora, start_model's, its adapters only, beside lora itself),
    the optimizer and gradient scaler states, every process's RNG states (so that dropout continues exactly after a
    resume) and what run gives (RUN_KEYS and more). Every process takes part, master_process writes.
    """
    assert set(RUN_KEYS) <= run.keys(), sorted(set(RUN_KEYS) - run.keys())
    model_state, optimizer_state = training_state(model, optimizer, fsdp)
    rng = rng_states(device)
    if lora:
        model_state, run = adapter_state(model_state), {**run, "lora": lora}
    if master_process:
        save_checkpoint(path, {"model": model_state, "optimizer": optimizer_state, "scaler": scaler.state_dict(),
                               **rng, **run})


def restore_training(checkpoint, model, optimizer, scaler, rank, device, fsdp):
    """A resumed run's optimizer state (its settings stay this run's), gradient scaler and RNG states."""
    load_training_state(model, optimizer, checkpoint["optimizer"], fsdp)
    if checkpoint["scaler"]:  # empty from a run without float16, whose resume in float16 starts a new scaler
        scaler.load_state_dict(checkpoint["scaler"])
    restore_rng_states(checkpoint, rank, device)


def training_state(model, optimizer, fsdp):
    """
    (model state, optimizer state), whole tensors, the optimizer's by parameter name as FSDP's are. Before the first
    step the optimizer has no state, and none is saved: torch's FSDP state dict would take a step of its own to make
    one (at a learning rate of 0, but counted, which changes every later step's bias correction).
    """
    if fsdp:  # every process holds a shard: gather whole tensors onto the CPU, in every process together
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(model, options=options), (
            get_optimizer_state_dict(model, optimizer, options=options) if optimizer.state else {})
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
    if not optimizer_state.get("state"):  # saved before the first step: the optimizer starts afresh, as it did
        return
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
