"""
Muon, the optimizer for the transformer blocks' matrices, with AdamW for the other parameters in the same
optimizer (https://kellerjordan.github.io/posts/muon/). GPT.configure_optimizers builds it.

- Muon: steps param groups marked muon=True along their momentum made orthogonal, the others as AdamW does.
- orthogonalize: the quintic Newton-Schulz iteration that makes a batch of matrices nearly orthogonal.
"""

import torch


class Muon(torch.optim.Optimizer):
    """
    Muon (Keller Jordan, 2024: https://kellerjordan.github.io/posts/muon/) for the param groups marked
    muon=True, AdamW for the others. Muon keeps a momentum of each matrix's gradient and steps along its
    Nesterov update made orthogonal: the same singular vectors, every singular value near 1, so that
    no direction dominates the step. Newton-Schulz iterations make it orthogonal with matrix products
    alone; all the matrices of one shape go through them together, as one batch, in float32.
    """

    def __init__(self, param_groups, lr, betas, momentum=0.95, eps=1e-8):
        super().__init__(param_groups, dict(lr=lr, betas=betas, momentum=momentum, eps=eps, muon=False))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if group["muon"]:
                self.muon_step(group, params)
            else:
                self.adamw_step(group, params)
        return loss

    # Each update is one torch._foreach_* call over all the group's tensors, not one call per tensor: on a GPU
    # every call is a kernel launch, and a small model's step is made of launches.
    def muon_step(self, group, params):
        by_shape = {}
        for p in params:
            by_shape.setdefault(p.shape, []).append(p)
        for shape, same_shape in by_shape.items():
            grads = [p.grad for p in same_shape]
            momenta = [self.state[p].setdefault("momentum_buffer", torch.zeros_like(p)) for p in same_shape]
            torch._foreach_lerp_(momenta, grads, 1 - group["momentum"])
            updates = torch._foreach_lerp(grads, momenta, group["momentum"])  # Nesterov: look one step ahead
            # a wide matrix's orthogonal update has smaller entries than a tall one's: scale it up to match
            step_size = group["lr"] * max(1.0, shape[0] / shape[1]) ** 0.5
            torch._foreach_mul_(same_shape, 1 - group["lr"] * group["weight_decay"])
            torch._foreach_add_(same_shape, orthogonalize(torch.stack(updates)).unbind(0), alpha=-step_size)

    def adamw_step(self, group, params):
        beta1, beta2 = group["betas"]
        states = [self.state[p] for p in params]
        for p, state in zip(params, states):
            if not state:
                state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
            state["step"] += 1
        grads = [p.grad for p in params]
        exp_avgs, exp_avg_sqs = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
        denominators = torch._foreach_div(exp_avg_sqs, [1 - beta2 ** s["step"] for s in states])
        torch._foreach_sqrt_(denominators)
        torch._foreach_add_(denominators, group["eps"])
        torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
        step_sizes = [-group["lr"] / (1 - beta1 ** s["step"]) for s in states]
        torch._foreach_addcdiv_(params, exp_avgs, denominators, step_sizes)


def orthogonalize(G, steps=5):
    """
    G (n, rows, cols) -> n matrices with G's singular vectors and singular values between about 0.7 and 1.2:
    Muon's quintic Newton-Schulz iteration, whose coefficients trade exactness for fast convergence.
    """
    a, b, c = 3.4445, -4.7750, 2.0315
    wide = G.size(1) <= G.size(2)
    X = G if wide else G.mT  # iterate on the smaller Gram matrix X @ X^T
    X = X / (X.norm(dim=(1, 2), keepdim=True) + 1e-7)  # singular values at most 1
    for _ in range(steps):
        A = X @ X.mT
        X = torch.baddbmm(X, torch.baddbmm(A, A, A, beta=b, alpha=c), X, beta=a)  # (a + bA + cA^2) X
    return X if wide else X.mT
