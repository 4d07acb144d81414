"""The gradient noise scale, measured from the gradients that accumulation already computes.

McCandlish et al. 2018, "An Empirical Model of Large-Batch Training": with G the true gradient and
Sigma the per-example gradient covariance, the *simple noise scale* B_simple = tr(Sigma) / |G|^2
is the batch size around which larger batches stop paying for themselves. Well below it, doubling
the batch (and the learning rate) halves the optimizer steps needed, so accumulating with a scaled
lr loses nothing per epoch; well above it, extra examples per step are mostly wasted and a fixed
number of epochs must cost accuracy, whatever the lr.

The paper's unbiased estimator (its Appendix A.1) needs the squared gradient norm at two batch
sizes of the same step. An accumulated step has both: each micro-batch gradient (the small batch,
``b`` examples) and their mean, the step's gradient (the big batch, ``B`` examples). With
E|g_b|^2 = |G|^2 + tr(Sigma) / b,

    |G|^2     ~ (B |G_B|^2 - b |G_b|^2) / (B - b)
    tr(Sigma) ~ (|G_b|^2 - |G_B|^2) / (1/b - 1/B)

where |G_b|^2 is the mean over the step's micro-batches. Each step's estimates are noisy (|G|^2
may even come out negative), so both are averaged over an epoch's steps *before* the ratio, as the
paper does; ``grad_noise_scale`` is that ratio.

The meter reads ``p.grad`` after each micro-batch's backward pass: no second forward or backward
pass. Because the trainer scales each micro-batch loss by 1/n, the micro-batch gradient is n times
the change of ``p.grad`` over that backward pass, so the meter keeps one copy of the gradients (the
model's size once) and does a few element-wise passes over them per micro-batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

# Keys the trainer adds to each epoch's metrics when the meter is on.
NOISE_KEYS = ("grad_norm_sq", "grad_trace_sigma", "grad_noise_scale")


def _sq_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Squared L2 norm of a list of tensors, as a float64 scalar on their device (no sync)."""
    return torch.stack(torch._foreach_norm(tensors)).double().pow(2).sum()


class NoiseScaleMeter:
    """Accumulates the noise-scale estimator over the steps of an epoch.

    Call ``micro_batch_done()`` after every micro-batch's backward pass (the loss scaled by
    1/parts, so ``p.grad`` ends the step as the effective batch's mean gradient), ``step_done()``
    after the last one and before the optimizer step, and ``epoch_values()`` once per epoch.

    Args:
        params: The model's parameters (those with ``requires_grad``).
        small: Examples per micro-batch (b).
        parts: Micro-batches per optimizer step (n >= 2); the big batch is B = n b.
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], *, small: int, parts: int) -> None:
        if parts < 2:
            raise ValueError(f"the noise scale needs at least two micro-batches per step; got {parts}")
        self.params = [p for p in params if p.requires_grad]
        self.small, self.parts, self.big = small, parts, small * parts
        self._previous: list[torch.Tensor] | None = None  # p.grad before this micro-batch
        self._done = 0  # micro-batches done in this step
        self._small_sq = None  # sum over this step's micro-batches of |g_b|^2
        self._steps = 0
        self._g2_sum = self._trace_sum = None

    def _grads(self) -> list[torch.Tensor]:
        return [p.grad for p in self.params if p.grad is not None]

    @torch.no_grad()
    def micro_batch_done(self) -> None:
        grads = self._grads()
        if self._done == 0:
            change = grads  # p.grad started the step at zero (None)
            if self._previous is None:
                self._previous = [torch.empty_like(g) for g in grads]
        else:
            change = torch._foreach_sub(grads, self._previous)
        sq = _sq_norm(change) * self.parts**2  # the micro-batch's mean gradient is parts x change
        self._small_sq = sq if self._small_sq is None else self._small_sq + sq
        self._done += 1
        if self._done < self.parts:  # the last micro-batch's gradients are not needed again
            torch._foreach_copy_(self._previous, grads)

    @torch.no_grad()
    def step_done(self) -> None:
        if self._done != self.parts:
            raise RuntimeError(f"step_done after {self._done} of {self.parts} micro-batches")
        small_sq = self._small_sq / self.parts  # mean |g_b|^2
        big_sq = _sq_norm(self._grads())  # |g_B|^2
        b, big = self.small, self.big
        g2 = (big * big_sq - b * small_sq) / (big - b)
        trace = (small_sq - big_sq) / (1.0 / b - 1.0 / big)
        self._g2_sum = g2 if self._g2_sum is None else self._g2_sum + g2
        self._trace_sum = trace if self._trace_sum is None else self._trace_sum + trace
        self._steps += 1
        self._done, self._small_sq = 0, None

    def epoch_values(self) -> dict[str, float]:
        """The epoch's mean |G|^2 and tr(Sigma) estimates and their ratio (NaN without steps, or when
        the mean |G|^2 estimate is not positive); resets for the next epoch. One device sync."""
        if self._steps == 0:
            values = {key: math.nan for key in NOISE_KEYS}
        else:
            g2 = self._g2_sum.item() / self._steps
            trace = self._trace_sum.item() / self._steps
            values = {
                "grad_norm_sq": g2,
                "grad_trace_sigma": trace,
                "grad_noise_scale": trace / g2 if g2 > 0 else math.nan,
            }
        self._steps, self._g2_sum, self._trace_sum = 0, None, None
        return values


def measurement_parts(micro_batches: int) -> int:
    """Micro-batches per step when the noise scale is measured: the run's own, or two halves of
    the batch for a run without accumulation (the same update: accumulation is exact). An odd batch
    cannot be halved; ``TrainConfig`` refuses it."""
    return max(2, micro_batches)
