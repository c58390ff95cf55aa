"""
The language-model head and the cross-entropy over chunks of tokens, so that the whole (tokens, vocab) logits
never exist: for GPT-2's vocabulary and a batch of 4 x 1024 tokens they are 0.8 GB in float32, and as much again
for their gradient. Each chunk's logits are made, turned into its loss and, when training, at once into its
gradients, then dropped; the matrix products are the ones the plain loss does, no recomputation.

- chunked_cross_entropy(x, weight, targets, reduction): F.cross_entropy(x @ weight.T, targets, ignore_index=-1)
  with reduction "mean" or "sum" (gradients for x and weight) or "none" (each token's loss), chunk by chunk.
"""

import torch
import torch.nn.functional as F

CHUNK_LOGITS = 2**25  # logits per chunk (128 MB in float32): the chunk's tokens are this over the vocabulary size


def chunked_cross_entropy(x, weight, targets, reduction="mean"):
    """x (N, C) hidden states, weight (V, C) the head, targets (N,) with -1 for none: the loss, as F.cross_entropy."""
    chunk = max(1, CHUNK_LOGITS // weight.size(0))
    scored = (targets != -1).sum().clamp(min=1) if reduction == "mean" else 1
    if reduction == "none" or not torch.is_grad_enabled():  # each chunk's logits live only while it is scored
        losses = torch.cat([F.cross_entropy((x[i:i + chunk] @ weight.t()).float(), targets[i:i + chunk],
                                            ignore_index=-1, reduction="none") for i in range(0, x.size(0), chunk)])
        return losses if reduction == "none" else losses.sum() / scored
    return SummedCrossEntropy.apply(x, weight, targets, chunk) / scored


class SummedCrossEntropy(torch.autograd.Function):
    """The summed cross-entropy of the tokens' logits x @ weight.T, its gradients made in the forward pass."""

    @staticmethod
    def forward(ctx, x, weight, targets, chunk):
        total = torch.zeros((), device=x.device, dtype=torch.float32)
        # a frozen head (LoRA's) needs no gradient: its products are left out
        grad_x, grad_weight = torch.empty_like(x), torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
        for i in range(0, x.size(0), chunk):
            x_chunk, t = x[i:i + chunk], targets[i:i + chunk]
            unscored = t == -1
            t = t.masked_fill(unscored, 0)
            # the chunk's logits, one (n, V) buffer, turned in place into their softmax: the loss is
            # log(sum(exp(logits - max))) + max - the target's logit
            probs = (x_chunk @ weight.t()).float()
            target_logits = probs.gather(1, t[:, None])
            top = probs.amax(dim=-1, keepdim=True)
            sums = probs.sub_(top).exp_().sum(dim=-1, keepdim=True)
            total += (sums.log() + top - target_logits).masked_fill_(unscored[:, None], 0.0).sum()
            # d(loss)/d(logits) = softmax - one-hot of the target, for the scored tokens only
            grad_logits = probs.div_(sums)
            grad_logits[torch.arange(len(t), device=t.device), t] -= 1.0
            grad_logits = grad_logits.masked_fill_(unscored[:, None], 0.0).to(x.dtype)
            grad_x[i:i + chunk] = grad_logits @ weight
            if grad_weight is not None:
                grad_weight.addmm_(grad_logits.t(), x_chunk)  # in place: no (V, C) product beside the sum
        ctx.save_for_backward(grad_x, grad_weight)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_x, grad_weight = ctx.saved_tensors
        return (grad_x * grad_total.to(grad_x.dtype),
                None if grad_weight is None else grad_weight * grad_total.to(grad_weight.dtype), None, None)
