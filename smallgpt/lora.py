"""
LoRA (Hu et al., 2021): finetune a pretrained model by training, beside some of its matrices W, a low-rank update:
y = x W^T + scale * dropout(x) A^T B^T, with A (rank, in) and B (out, rank), scale = alpha / rank, and B zero at
first, so that training starts from the base model exactly. The base weights stay frozen: no gradients and no
optimizer state for them; a checkpoint keeps the adapters and where the base came from, with a checksum of its
weights, never the base itself (smallgpt/checkpoint.py).

- TARGETS: the matrices of a block that may get adapters; parse_targets(text): those a setting names.
- add_adapters(model, rank, alpha, dropout, targets): adapters on those matrices of every block, all else frozen.
- is_adapter(name), adapter_state(model): the adapters' parameters, what a checkpoint keeps of the model.
- merge_adapters(model): each adapter folded into its matrix, and removed: a plain model again.
- weights_checksum(model): a sha256 of the model's weights, by which a base is known again.
"""

import difflib
import hashlib
import math

import torch
import torch.nn as nn

from smallgpt.errors import UserError

TARGETS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # attention's and the MLP's matrices
ADAPTER = ("lora_A", "lora_B")  # the parameter names an adapter adds to its nn.Linear


def parse_targets(text):
    """The targets in a comma-separated setting, e.g. "attn.c_attn,mlp.c_fc"; UserError for an unknown one."""
    targets = [name.strip() for name in text.split(",") if name.strip()]
    for name in targets:
        if name not in TARGETS:
            close = difflib.get_close_matches(name, TARGETS, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"use {', '.join(TARGETS)}"
            raise UserError(f"unknown lora_targets '{name}': {hint}")
    if not targets:
        raise UserError(f"lora_targets names no matrix: give one or more of {', '.join(TARGETS)}")
    return tuple(dict.fromkeys(targets))


def add_adapters(model, rank, alpha, dropout, targets):
    """Freeze every weight of model, then give the targets of every block an adapter of this rank (trainable)."""
    if not model.transformer.h:
        raise UserError("lora_rank: the model has no blocks for adapters (n_layer=0, the bigram): train it whole")
    for p in model.parameters():
        p.requires_grad_(False)
    for block in model.transformer.h:
        for target in targets:
            linear = block.get_submodule(target)
            if rank > min(linear.in_features, linear.out_features):
                raise UserError(f"lora_rank={rank} is above the size of {target} ({linear.out_features} x "
                                f"{linear.in_features}): use at most {min(linear.in_features, linear.out_features)}")
            linear.lora_A = nn.Parameter(torch.empty(rank, linear.in_features, device=linear.weight.device))
            nn.init.kaiming_uniform_(linear.lora_A, a=math.sqrt(5))  # as nn.Linear's own weights, and PEFT's
            linear.lora_B = nn.Parameter(torch.zeros(linear.out_features, rank, device=linear.weight.device))
            linear.lora_dropout, linear.lora_scale = nn.Dropout(dropout), alpha / rank
            linear.lora_hook = linear.register_forward_hook(adapter_forward)


def adapter_forward(linear, inputs, output):
    """nn.Linear's output plus its adapter's low-rank update."""
    x = linear.lora_dropout(inputs[0]) if linear.training else inputs[0]
    low = (x @ linear.lora_A.t()).flatten(0, -2)  # (tokens, rank)
    # added in place: no (tokens, out) product beside the output (which nn.Linear's backward does not need); an
    # in-place product is beyond autocast's reach, so it takes the output's dtype (bfloat16 or float16) by hand
    output.flatten(0, -2).addmm_(low.to(output.dtype), linear.lora_B.t().to(output.dtype), alpha=linear.lora_scale)
    return output


def is_adapter(name):
    return name.rpartition(".")[2] in ADAPTER


def adapter_state(state):
    """The adapters' tensors of a state dict."""
    return {name: value for name, value in state.items() if is_adapter(name)}


@torch.no_grad()
def merge_adapters(model):
    """Fold every adapter into its matrix, W + scale B A, and remove it: the model computes the same, plainly."""
    for linear in model.modules():
        if hasattr(linear, "lora_hook"):
            linear.weight += (linear.lora_B @ linear.lora_A) * linear.lora_scale
            linear.lora_hook.remove()
            for name in (*ADAPTER, "lora_dropout", "lora_scale", "lora_hook"):
                delattr(linear, name)
    return model


def weights_checksum(model):
    """sha256 of the model's weights (not its adapters), by name, as stored: a base is known again by it."""
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        if not is_adapter(name):
            digest.update(name.encode())
            digest.update(value.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
