"""AdamW and gradient clipping over M stacked models, each with its own step count and rate.

Every parameter of `fit_stacked` is one (M, ...) tensor whose row m is model m's. AdamW is
elementwise, so one update of the stack equals M separate `torch.optim.AdamW` updates when
each row gets its own learning rate, weight decay and bias correction (its own step count:
a model that did not step this time, because its epoch has fewer batches or it has stopped,
keeps its row and its count unchanged). The arithmetic is that of torch's single-tensor AdamW
(the one `fit` runs on CPU), scalars computed in double as there, to float rounding. Clipping by
global norm is per model: the norm of row m over all parameters, as `clip_grad_norm_` computes
it for one model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

# torch.optim.AdamW's defaults, which `fit` uses.
BETA1, BETA2, EPS = 0.9, 0.999, 1e-8


class StackedAdamW:
    """AdamW over stacked (M, ...) parameters; `step(rows, lrs)` updates only the given rows."""

    def __init__(self, params: Sequence[Tensor], weight_decays: Sequence[float]) -> None:
        self.params = list(params)
        self.weight_decays = [float(w) for w in weight_decays]
        self.exp_avgs = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sqs = [torch.zeros_like(p) for p in self.params]
        self.steps = [0] * len(self.weight_decays)  # optimizer steps taken by each model
        self.stepped = [False] * len(self.params)  # whether the parameter ever had a gradient

    @torch.no_grad()
    def step(self, rows: Sequence[int], lrs: Sequence[float]) -> None:
        """One AdamW step of the models `rows` (sorted), model rows[i] at learning rate lrs[i]."""
        if not rows:
            return
        for m in rows:
            self.steps[m] += 1
        coefficients = self._coefficients(rows, lrs)
        # The other rows are updated by identities (decay 1, moment weights 0 and 1, step 0) on a
        # zero gradient: cheaper than gathering and scattering the stepping rows, and exact.
        idle = [m for m in range(len(self.steps)) if m not in set(rows)]
        idle_index = torch.tensor(idle, device=self.params[0].device) if idle else None
        for i, param in enumerate(self.params):
            if param.grad is None:  # as torch's AdamW: a parameter without a gradient is not touched
                continue
            self.stepped[i] = True
            if idle_index is not None:  # index_fill_, not a product: an idle row may hold NaN (diverged)
                param.grad.index_fill_(0, idle_index, 0.0)
            _adamw_rows(param, param.grad, self.exp_avgs[i], self.exp_avg_sqs[i], coefficients)

    def _coefficients(self, rows: Sequence[int], lrs: Sequence[float]) -> dict[str, Tensor]:
        """Per-model scalars (identities for models not in `rows`), computed in double as torch
        computes them from Python floats."""
        n = len(self.steps)
        columns = {"decay": [1.0] * n, "beta1": [0.0] * n, "beta2": [1.0] * n, "neg_step_size": [0.0] * n,
                   "bias2_sqrt": [1.0] * n}  # fmt: skip
        for m, lr in zip(rows, lrs):
            step = self.steps[m]
            columns["decay"][m] = 1 - lr * self.weight_decays[m]
            columns["beta1"][m] = 1 - BETA1
            columns["beta2"][m] = BETA2
            columns["neg_step_size"][m] = -lr / (1 - BETA1**step)
            columns["bias2_sqrt"][m] = (1 - BETA2**step) ** 0.5
        device, dtype = self.params[0].device, self.params[0].dtype
        return {name: torch.tensor(values, dtype=torch.float64).to(device, dtype) for name, values in columns.items()}

    def model_state(self, m: int, lr: float, plateau_scale: float, like: nn.Module) -> dict:
        """Model m's state as `torch.optim.AdamW(like.parameters()).state_dict()` would hold it,
        so `fit(..., optimizer_state=...)` resumes a stacked run. `like` is model m (its
        parameters in the stack's order)."""
        optimizer = torch.optim.AdamW(like.parameters(), lr=lr, weight_decay=self.weight_decays[m])
        for i, param in enumerate(like.parameters()):
            if self.stepped[i]:
                optimizer.state[param] = {
                    "step": torch.tensor(float(self.steps[m])),
                    "exp_avg": self.exp_avgs[i][m].clone(memory_format=torch.contiguous_format),
                    "exp_avg_sq": self.exp_avg_sqs[i][m].clone(memory_format=torch.contiguous_format),
                }
        optimizer.param_groups[0]["plateau_scale"] = plateau_scale
        return optimizer.state_dict()


def _adamw_rows(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, c: dict[str, Tensor]) -> None:
    """torch's `_single_tensor_adam` with decoupled weight decay, one set of scalars per row."""
    shape = (-1,) + (1,) * (param.ndim - 1)
    param.mul_(c["decay"].view(shape))
    exp_avg.lerp_(grad, c["beta1"].view(shape))
    exp_avg_sq.mul_(c["beta2"].view(shape)).addcmul_(grad, grad, value=1 - BETA2)
    denom = exp_avg_sq.sqrt().div_(c["bias2_sqrt"].view(shape)).add_(EPS)
    param.addcmul_(torch.div(exp_avg, denom, out=denom), c["neg_step_size"].view(shape))  # addcdiv_'s value * t1 / t2


@torch.no_grad()
def clip_grad_norms_(params: Sequence[Tensor], max_norms: Sequence[float]) -> None:
    """`nn.utils.clip_grad_norm_(model_m.parameters(), max_norms[m])` for every row m at once;
    a max norm of 0 leaves that model's gradients as they are (`fit` does not clip then)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads or not any(max_norms):
        return
    # (n_params, M); over the dimensions of one model's tensor, without a copy of a transposed layout
    norms = torch.stack(
        [torch.linalg.vector_norm(g, dim=tuple(range(1, g.ndim))) if g.ndim > 1 else g.abs() for g in grads]
    )
    total = torch.linalg.vector_norm(norms, dim=0)
    limit = torch.tensor(max_norms, dtype=total.dtype, device=total.device)
    coefficient = torch.where(limit > 0, torch.clamp(limit / (total + 1e-6), max=1.0), torch.ones_like(total))
    for g in grads:
        g.mul_(coefficient.view((-1,) + (1,) * (g.ndim - 1)))
