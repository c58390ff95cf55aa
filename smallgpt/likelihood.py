"""
How likely a GPT finds a continuation of a context: what HellaSwag (hellaswag.py) and lm-evaluation-harness's
tasks (harness.py) ask of a model. Many pairs go through the model at once, in padded batches of similar lengths.

- lenient_encoder(tokenizer_spec): encode for a benchmark's texts, which a character model may not have seen whole.
- window(context, continuation, block_size): a pair's input and target ids, cut to the model's block.
- continuation_losses(model, pairs, autocast): for each (context ids, continuation ids) pair, the cross-entropy
  summed over the continuation's tokens, how many they are, and whether each was the model's first choice.
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F

from smallgpt.tokenizer import make_codec


def lenient_encoder(tokenizer_spec):
    """The tokenizer's encode, which leaves out the characters a character-level model has never seen."""
    encode, _ = make_codec(tokenizer_spec)
    if tokenizer_spec["tokenizer"] != "char":
        return encode
    known = set(tokenizer_spec["chars"])
    return lambda text: encode("".join(c for c in text if c in known))


def window(context, continuation, block_size):
    """(input ids, target ids) of the last block_size + 1 tokens of context + continuation; targets are -1 where
    they are the context's, so that only the continuation's tokens are scored (a long context loses its start)."""
    tokens = (context + continuation)[-(block_size + 1):]
    n_scored = min(len(continuation), len(tokens) - 1)
    return tokens[:-1], [-1] * (len(tokens) - 1 - n_scored) + tokens[len(tokens) - n_scored:]


def padded_batches(windows, batch_tokens):
    """The windows' indices, shortest first, in batches of at most batch_tokens once padded (one row at least)."""
    batches, batch = [], []
    for i in sorted(range(len(windows)), key=lambda i: len(windows[i][0])):
        if batch and (len(batch) + 1) * len(windows[i][0]) > batch_tokens:
            batches.append(batch)
            batch = []
        batch.append(i)
    return batches + [batch] if batch else batches


@torch.no_grad()
def continuation_losses(model, pairs, autocast, batch_tokens=8192, fsdp=False):
    """
    [(loss, n_tokens, greedy)] for each (context ids, continuation ids) pair: the continuation's cross-entropy
    summed over its n_tokens tokens, and whether each of them is the model's most likely next token.
    With fsdp (a sharded model, whose forward passes are collective), every process runs as many forward passes.
    """
    block_size, device = model.config.block_size, model.lm_head.weight.device
    windows = [window(context, continuation, block_size) for context, continuation in pairs]
    batches = padded_batches(windows, batch_tokens)
    n_passes = torch.tensor(len(batches), device=device)
    if fsdp and dist.is_initialized():
        dist.all_reduce(n_passes, op=dist.ReduceOp.MAX)
    results = [None] * len(pairs)
    was_training = model.training
    model.eval()
    if fsdp:  # FSDP gathers the weights outside the blocks (embeddings, head) in the model's forward alone
        model.unshard()
    for k in range(int(n_passes)):
        rows = [windows[i] for i in batches[k]] if k < len(batches) else [([0], [-1])]  # a pass for FSDP alone
        T = max(1, *(len(x) for x, _ in rows))
        x = torch.zeros(len(rows), T, dtype=torch.long)
        y = torch.full((len(rows), T), -1, dtype=torch.long)  # -1: padding and context, not scored
        for r, (inputs, targets) in enumerate(rows):
            x[r, :len(inputs)], y[r, :len(targets)] = torch.tensor(inputs), torch.tensor(targets)
        x, y = x.to(device), y.to(device)
        scored = y != -1  # (B, T)
        with autocast:  # the logits of the scored positions only: most of each row is context
            logits = model.lm_head(model.hidden_states(x)[scored])  # (N, vocab_size)
            losses = F.cross_entropy(logits.float(), y[scored], reduction="none")  # (N,)
        row = scored.nonzero()[:, 0]  # the row of each scored position
        loss_sums = torch.zeros(len(rows), device=device).index_add_(0, row, losses).tolist()
        wrong = torch.zeros(len(rows), device=device).index_add_(0, row, (logits.argmax(-1) != y[scored]).float())
        greedy = (wrong == 0).tolist()
        n_tokens = scored.sum(1).tolist()
        for r, i in enumerate(batches[k] if k < len(batches) else []):
            results[i] = (loss_sums[r], n_tokens[r], greedy[r])
    if fsdp:
        model.reshard()
    model.train(was_training)
    return results
