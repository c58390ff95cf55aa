"""
How likely a GPT finds a continuation of a context: what HellaSwag (hellaswag.py) and lm-evaluation-harness's
tasks (harness.py) ask of a model. Many pairs go through the model at once, in padded batches of similar lengths;
pairs with the same context share a row, the context read once and each continuation after it under a mask; only the
positions whose next token is scored reach the language-model head.

- lenient_encoder(tokenizer_spec): encode for a benchmark's texts, which a character model may not have seen whole.
- window(context, continuation, block_size): a pair's input and target ids, cut to the model's block.
- shared_rows(pairs, block_size, n_embd): the pairs' windows, those with the same context in one row where it pays.
- scored_losses(model, hidden, targets): the head's cross-entropy and first choice at some positions.
- continuation_losses(model, pairs, autocast): for each (context ids, continuation ids) pair, the cross-entropy
  summed over the continuation's tokens, how many they are, and whether each was the model's first choice.
"""

import torch
import torch.distributed as dist

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


def sharing_pays(n_context, n_continuations, n_embd):
    """
    Whether a row holding a context once and its continuations costs less than a row for each. In multiply-adds
    over n_embd, a layer costs 12 n_embd a token in its matrix products and 2 T^2 for a row of T tokens attending,
    half that in the causal order, whose kernels skip what it masks (a shared row's mask is skipped by none).
    """
    shared = n_context + sum(n - 1 for n in n_continuations)
    alone = [n_context + n - 1 for n in n_continuations]
    return 12 * n_embd * shared + 2 * shared**2 < sum(12 * n_embd * T + T**2 for T in alone)


def shared_rows(pairs, block_size, n_embd):
    """
    The windows of (context ids, continuation ids) pairs, those whose windowed context is the same in one row where
    that costs less (sharing_pays): the context, then each continuation but its last token (the context's last
    position predicts every continuation's first). Each row is (tokens, positions, segments, scored): segments 0 for
    the context and k + 1 for the k-th continuation (who may attend to whom), scored [(index into tokens, target,
    pair)] for each token scored.
    """
    groups = {}  # windowed context -> [(pair, the continuation's tokens that are scored)]
    for i, (context, continuation) in enumerate(pairs):
        inputs, targets = window(context, continuation, block_size)
        n_context = sum(t == -1 for t in targets) + 1
        if n_context > len(targets):  # nothing to score (no continuation, or no context before it)
            continue
        groups.setdefault(tuple(inputs[:n_context]), []).append((i, targets[n_context - 1:]))
    rows = []
    for context, continuations in groups.items():
        shared = sharing_pays(len(context), [len(c) for _, c in continuations], n_embd)
        for group in [continuations] if shared else [[c] for c in continuations]:
            tokens, positions, segments = list(context), list(range(len(context))), [0] * len(context)
            scored = []
            for k, (i, continuation) in enumerate(group):
                scored += [(len(context) - 1 if j == 0 else len(tokens) + j - 1, target, i)
                           for j, target in enumerate(continuation)]
                tokens += continuation[:-1]
                positions += range(len(context), len(context) + len(continuation) - 1)
                segments += [k + 1] * (len(continuation) - 1)
            rows.append((tokens, positions, segments, scored))
    return rows


def padded_batches(rows, batch_tokens):
    """The rows' indices, shortest first, in batches of at most batch_tokens once padded (one row at least)."""
    batches, batch = [], []
    for i in sorted(range(len(rows)), key=lambda i: len(rows[i][0])):
        if batch and (len(batch) + 1) * len(rows[i][0]) > batch_tokens:
            batches.append(batch)
            batch = []
        batch.append(i)
    return batches + [batch] if batch else batches


def batch_tensors(rows, device):
    """Padded rows -> tokens, positions (B, T), the mask (B, 1, T, T) or None where each row holds one sequence,
    and the scored positions' flat indices, targets and pairs (N,)."""
    B, T = len(rows), max(len(tokens) for tokens, *_ in rows)
    tokens, positions = torch.zeros(B, T, dtype=torch.long), torch.zeros(B, T, dtype=torch.long)
    segments = torch.full((B, T), -1, dtype=torch.long)  # -1: padding, which sees the context and padding only
    for r, (row_tokens, row_positions, row_segments, _) in enumerate(rows):
        n = len(row_tokens)
        tokens[r, :n], positions[r, :n], segments[r, :n] = map(torch.tensor, (row_tokens, row_positions, row_segments))
    mask = None
    if segments.max() > 1:  # some row holds several continuations: each sees the context and itself only
        order = torch.arange(T)
        earlier = order[None, :, None] >= order[None, None, :]  # (1, T, T): query, key
        mask = (earlier & ((segments[:, None, :] == 0) | (segments[:, None, :] == segments[:, :, None])))[:, None]
    scored = [torch.tensor(v, device=device)
              for v in zip(*[(r * T + t, target, i) for r, row in enumerate(rows) for t, target, i in row[3]])]
    if mask is None:  # one sequence a row: the positions are the causal order's own
        return tokens.to(device), None, None, *scored
    return tokens.to(device), positions.to(device), mask.to(device), *scored


def scored_losses(model, hidden, targets, logits_per_chunk=1 << 23):
    """
    The cross-entropy of each target (N,) after its hidden state (N, C), and whether it is the model's first choice.
    The head runs on chunks of positions, so that a chunk's logits stay in the CPU's caches through the passes that
    read them (GPT-2's vocabulary makes each position's logits 200 kB).
    """
    losses, right = [], []
    chunk = max(1, logits_per_chunk // model.config.vocab_size)
    for h, y in zip(hidden.split(chunk), targets.split(chunk)):
        logits = model.lm_head(h).float()  # (chunk, vocab_size)
        target_logits = logits.gather(1, y[:, None])[:, 0]
        losses.append(torch.logsumexp(logits, dim=-1) - target_logits)
        right.append(target_logits >= logits.amax(dim=-1))
    return torch.cat(losses), torch.cat(right)


@torch.no_grad()
def continuation_losses(model, pairs, autocast, batch_tokens=None, fsdp=False):
    """
    [(loss, n_tokens, greedy)] for each (context ids, continuation ids) pair: the continuation's cross-entropy
    summed over its n_tokens tokens, and whether each of them is the model's most likely next token. batch_tokens:
    a forward pass's tokens, padding included (None: 2,048 on a CPU, whose caches a small model's batch then fits,
    8,192 on a GPU).
    With fsdp (a sharded model, whose forward passes are collective), every process runs as many forward passes.
    """
    device = model.lm_head.weight.device
    rows = shared_rows(pairs, model.config.block_size, model.config.n_embd)
    batch_tokens = batch_tokens or (2048 if device.type == "cpu" else 8192)
    batches = padded_batches(rows, batch_tokens)
    n_passes = torch.tensor(len(batches), device=device)
    if fsdp and dist.is_initialized():
        dist.all_reduce(n_passes, op=dist.ReduceOp.MAX)
    loss_sums, wrong = torch.zeros(len(pairs), device=device), torch.zeros(len(pairs), device=device)
    n_tokens = torch.zeros(len(pairs), dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    if fsdp:  # FSDP gathers the weights outside the blocks (embeddings, head) in the model's forward alone
        model.unshard()
    for k in range(int(n_passes)):
        if k >= len(batches):  # a pass for FSDP's sake alone
            model.hidden_states(torch.zeros(1, 1, dtype=torch.long, device=device))
            continue
        tokens, positions, mask, where, targets, pair = batch_tensors([rows[r] for r in batches[k]], device)
        with autocast:
            hidden = model.hidden_states(tokens, positions=positions, mask=mask).flatten(0, 1)  # (B * T, C)
            losses, right = scored_losses(model, hidden[where], targets)  # the scored positions only reach the head
        loss_sums.index_add_(0, pair, losses)
        wrong.index_add_(0, pair, (~right).float())
        n_tokens.index_add_(0, pair, torch.ones_like(pair))
    if fsdp:
        model.reshard()
    model.train(was_training)
    return list(zip(loss_sums.tolist(), n_tokens.tolist(), (wrong == 0).tolist()))
