"""
Training for a time instead of a number of steps (train.py's max_seconds): "the best model in 5 minutes on my
laptop", and what lets tune.py compare a small fast model with a big slow one fairly.

- TimeBudget(max_seconds, eval_interval, device, saved, iter_num): how many steps fit in the time left. fit() is
  called when due(), after the first steps and then every tenth: the pace comes from the recent steps (so that a
  change of load shows within a few dozen steps), and the evaluations' time counts in the share that they recur.
  saved() is what a checkpoint keeps of it (the steps fitted, the seconds spent, the pace), so that a resumed run
  continues the same schedule and spends only what is left of the time. Under torchrun, process 0's fit holds for
  all: every process stops at one step.
"""

import math
import time

import torch
import torch.distributed as dist

from smallgpt.errors import UserError

RECENT_FITS = 5  # the pace is that of the steps since the fifth fit back


class TimeBudget:

    def __init__(self, max_seconds, eval_interval, device, saved=None, iter_num=0):
        """saved: the budget in a checkpoint resumed at iter_num, if any."""
        self.max_seconds, self.eval_interval, self.device = max_seconds, eval_interval, device
        saved = saved if max_seconds else None  # a run resumed without max_seconds trains for its max_iters
        self.resumed = saved is not None
        self.start = time.time()  # train.py sets it again where training starts
        self.spent_before = saved["seconds"] if saved else 0.0  # by the runs that this one resumes
        self.steps = saved["max_iters"] if saved else None  # the iteration that the run ends at, as last fitted
        self.pace = saved["step_seconds"] if saved else None  # seconds a step, its share of evaluations included
        # (iteration, share of the schedule done) where the schedule was last fitted, from which it goes on to steps
        self.anchor = tuple(saved.get("anchor", (iter_num, iter_num / max(self.steps or 1, 1)))) if saved else None
        if saved and max_seconds > saved["max_seconds"] and self.pace:  # more time: a longer schedule from here
            self.set_steps(iter_num, iter_num + self.steps_left())
        elif saved and (self.spent_before >= max_seconds or self.steps is not None and iter_num >= self.steps):
            raise UserError(f"nothing left to train: the run trained for its max_seconds={saved['max_seconds']:g} "
                            f"({self.spent_before:.1f}s, up to iter {iter_num}); raise --max_seconds to train on")
        self.eval_seconds, self.evaluations = 0.0, 0  # the time of this process's evaluations, and how many
        self.marks = []  # (seconds of training steps in this process, the next iteration) at the recent fits
        self.announce = True  # a fit is printed first, then after each evaluation

    def spent(self):
        return self.spent_before + time.time() - self.start

    def steps_left(self):
        return max(0, math.floor((self.max_seconds - self.spent()) / self.pace))

    def evaluated(self, seconds):
        """An evaluation (and its checkpoint) took this long."""
        self.eval_seconds += seconds
        self.evaluations += 1
        self.announce = True

    def due(self, local_iter_num):
        """Whether to fit after this step of this process: every tenth, and a new run after its second and fourth
        too (a budget may be a few slow steps: a GPT-2 step on a CPU takes seconds; a resumed run knows its pace)."""
        return local_iter_num % 10 == 0 or local_iter_num in (1, 2, 4) and not self.resumed

    def fit(self, next_iter, verbose):
        """
        Whether the run's end is fitted anew: self.steps, the iteration to end at, becomes next_iter plus the steps
        that fit in the time left, at the pace of the steps since the fit RECENT_FITS back. The first call only
        marks where the pace is measured from.
        """
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()  # the steps' kernels are done: their time is all in
        self.marks = [*self.marks[-RECENT_FITS:], (time.time() - self.start - self.eval_seconds, next_iter)]
        if len(self.marks) == 1:
            return False
        step_seconds = recent_pace(self.marks)
        eval_seconds = self.eval_seconds / max(self.evaluations, 1)
        self.pace = step_seconds + eval_seconds / self.eval_interval  # an evaluation every eval_interval steps
        fitted = torch.tensor(next_iter + self.steps_left(), device=self.device)
        if dist.is_initialized():
            dist.broadcast(fitted, 0)
        self.set_steps(next_iter, int(fitted))
        if verbose and self.announce:
            print(f"max_seconds={self.max_seconds:g}: {self.steps} steps fit, at {step_seconds * 1000:.0f}ms a step")
        self.announce = False
        return True

    def set_steps(self, next_iter, steps):
        """End the run at iteration steps: the schedule goes on from where it is at next_iter, faster or slower, never
        with a jump (a busy machine's pace moves the end, not the learning rate)."""
        self.anchor = (next_iter, self.progress(next_iter) if self.steps else 0.0)
        self.steps = steps

    def progress(self, it):
        """The share of the learning rate's decay done at iteration it: 0 at the first fit, 1 at the end fitted."""
        anchor_iter, done = self.anchor
        return min(1.0, done + (1.0 - done) * max(0, it - anchor_iter) / max(self.steps - anchor_iter, 1))

    def saved(self):
        """What a checkpoint keeps of the budget: nothing without max_seconds."""
        return {"budget": {"max_iters": self.steps, "seconds": self.spent(), "step_seconds": self.pace,
                           "max_seconds": self.max_seconds, "anchor": list(self.anchor or ())}
                } if self.max_seconds else {}


def recent_pace(marks):
    """Seconds a step from the first to the last of marks, (seconds of training steps, iteration) pairs."""
    (seconds_then, iter_then), (seconds_now, iter_now) = marks[0], marks[-1]
    return (seconds_now - seconds_then) / (iter_now - iter_then)
