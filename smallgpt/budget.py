"""
Training for a time instead of a number of steps (train.py's max_seconds): "the best model in 5 minutes on my
laptop", and what lets tune.py compare a small fast model with a big slow one fairly.

- steps_that_fit(seconds_left, step_seconds, device): how many more steps of step_seconds fit in seconds_left;
  under torchrun, process 0's figure, so that every process stops at the same step.
"""

import math

import torch
import torch.distributed as dist


def steps_that_fit(seconds_left, step_seconds, device="cpu"):
    steps = torch.tensor(max(0, math.floor(seconds_left / step_seconds)), device=device)
    if dist.is_initialized():
        dist.broadcast(steps, 0)
    return int(steps)
