"""
EleutherAI's lm-evaluation-harness (pip install lm-eval) for our models: every task it defines, for any
checkpoint, rotary and QK-norm models included, which its own GPT-2 loader could not read. eval.py imports this
file only when a task is not built in.

- HarnessModel(model, tokenizer_spec, autocast): our GPT as the harness's LM. loglikelihood scores contexts and
  continuations in padded batches; loglikelihood_rolling, whole texts in windows of block_size; generate_until
  continues greedily through the KV cache (with the penalties against repetition a task asks for) up to a stop
  string. Under torchrun the processes share the requests.
- task_manager(names, include_path, built_in): the harness's tasks, once every name is known to it.
- run_tasks(lm, names, task_manager, limit): {task: {metric: value, ..., "examples": n}} on process 0.
"""

import difflib

import torch
import torch.distributed as dist
from lm_eval import simple_evaluate
from lm_eval.api.model import LM
from lm_eval.tasks import TaskManager
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from smallgpt.errors import UserError
from smallgpt.likelihood import continuation_losses, lenient_encoder
from smallgpt.sampling import Penalties
from smallgpt.tokenizer import EOT, make_codec


class HarnessModel(LM):

    def __init__(self, model, tokenizer_spec, autocast, batch_tokens=None):
        super().__init__()
        self.model, self.autocast, self.batch_tokens = model.eval(), autocast, batch_tokens
        self.encode, self.decode = lenient_encoder(tokenizer_spec), make_codec(tokenizer_spec)[1]
        self.vocab_size = tokenizer_spec["vocab_size"]
        # what every text follows, as in training: a BPE's end-of-text token; a newline for a character model
        self.eot = EOT if tokenizer_spec["tokenizer"] != "char" else "\n"
        self.prefix = self.encode(self.eot) or [0]
        self._device = model.lm_head.weight.device
        if dist.is_initialized():
            self._rank, self._world_size = dist.get_rank(), dist.get_world_size()

    def losses(self, pairs):
        return continuation_losses(self.model, pairs, self.autocast, self.batch_tokens)

    def loglikelihood(self, requests):
        pairs = []
        for context, continuation in (request.args for request in requests):
            # trailing spaces go with the continuation, where a BPE puts them: "a b" is "a", " b"
            n_spaces = len(context) - len(context.rstrip(" "))
            if n_spaces:
                context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
            pairs.append((self.encode(context) or self.prefix, self.encode(continuation)))
        return [(-loss, greedy) for loss, _, greedy in self.losses(pairs)]

    def loglikelihood_rolling(self, requests):
        windows, owners = [], []  # every token of every text scored once, with as much context as fits
        for k, (text,) in enumerate(request.args for request in requests):
            for pair in get_rolling_token_windows(self.encode(text), self.prefix[-1], self.model.config.block_size, 1):
                windows.append(make_disjoint_window(pair))
                owners.append(k)
        totals = [0.0] * len(requests)
        for k, (loss, _, _) in zip(owners, self.losses(windows)):
            totals[k] -= loss
        return totals

    def generate_until(self, requests):
        outputs = []
        for context, settings in (request.args for request in requests):
            stops = settings.get("until") or []
            stops = [stops] if isinstance(stops, str) else stops
            idx = torch.tensor([self.encode(context) or self.prefix], device=self._device)  # (1, T)
            ids, text = [], ""
            # greedy, with the penalties against repetition that the task asks for, if any (as Hugging Face's)
            penalties = Penalties(settings.get("repetition_penalty", 1.0), settings.get("frequency_penalty", 0.0),
                                  settings.get("presence_penalty", 0.0))
            with self.autocast:
                for token in self.model.generate_stream(idx, settings.get("max_gen_toks", 256), top_k=1,
                                                        penalties=penalties, tokenizer_vocab_size=self.vocab_size):
                    ids.append(token.item())
                    text = self.decode(ids)
                    if any(stop in text for stop in [*stops, self.eot]):
                        break
            for stop in [*stops, self.eot]:
                text = text.split(stop)[0]
            outputs.append(text)
        return outputs

    # the harness gathers what the processes computed through these
    def all_gather(self, tensor):
        gathered = [torch.zeros_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(gathered, tensor)
        return torch.stack(gathered)

    def gather_object(self, obj, dst=0):
        gathered = [None] * self.world_size if self.rank == dst else None
        dist.gather_object(obj, gathered, dst)
        return gathered

    def barrier(self):
        dist.barrier()


def task_manager(names, include_path, built_in=()):
    """The harness's TaskManager, with the task definitions in include_path too; UserError for an unknown name."""
    manager = TaskManager(include_path=include_path or None)
    for name in names:
        if name not in manager.all_tasks:
            close = difflib.get_close_matches(name, [*built_in, *manager.all_tasks], n=1)
            hint = f"did you mean '{close[0]}'?" if close else "lm-eval ls tasks lists lm-evaluation-harness's tasks"
            raise UserError(f"unknown task '{name}'; {hint}")
    return manager


def run_tasks(lm, names, manager, limit=None):
    """{task: {metric: value, "examples": n}} of each task named, on process 0 (the others get {})."""
    output = simple_evaluate(model=lm, tasks=names, task_manager=manager, limit=limit, log_samples=False,
                             bootstrap_iters=1000)
    if output is None:  # not process 0
        return {}
    figures = {}
    for task, metrics in output["results"].items():  # "acc,none": ..., or "exact_match,strict-match" for a filter's
        figures[task] = {metric.removesuffix(",none"): value for metric, value in metrics.items()
                         if "," in metric and "_stderr" not in metric and isinstance(value, (int, float))}
        figures[task]["examples"] = output["n-samples"].get(task, {}).get("effective", 0)
    return figures
