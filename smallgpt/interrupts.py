"""
Stopping a training run cleanly. Ctrl-C (SIGINT), or SIGTERM as clusters send before preempting a job, asks
train.py to finish the current step, save a checkpoint and exit; a second signal quits at once, without saving.

- catch_stop_signals: install the handlers (before start-up, so that a signal then counts for the first step).
- stop_requested: whether a signal has come; under torchrun, to any of the processes, so that they stop together
  (a process that saved alone would wait forever for the others).
"""

import signal
import sys

import torch
import torch.distributed as dist

_received = False  # set by the handler alone


def catch_stop_signals(announce):
    """Handle SIGINT and SIGTERM; announce: whether this process prints that it is stopping (one, not all)."""

    def on_signal(signum, frame):
        global _received
        name = signal.Signals(signum).name
        if _received:
            sys.exit(f"{name} again: quitting at once, without saving")
        _received = True
        if announce:
            print(f"{name}: finishing this step, then saving a checkpoint (send it again to quit at once)", flush=True)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)


def stop_requested(device):
    if not dist.is_initialized():
        return _received
    stop = torch.tensor(float(_received), device=device)
    dist.all_reduce(stop, op=dist.ReduceOp.MAX)
    return stop.item() > 0
