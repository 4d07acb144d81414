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
the change of ``p.grad`` over that backward pass, so the meter keeps one flat copy of the gradients
(the model's size once) and does a few element-wise passes over it per micro-batch.

A run without accumulation has no second batch size, so the trainer runs a step as two halves for
the measurement (the same update: accumulation is exact). Halves cost a small model more per image
(on the CPU preset a half-split step of batch 32 took about 1.2x a whole one), so only one step in
``HALVES_EVERY`` is split and measured; accumulated runs are measured at every step, for free.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

HALVES_EVERY = 8  # without accumulation, one step in 8 is split in halves and measured
# Keys the trainer adds to each epoch's metrics when the meter is on.
NOISE_KEYS = ("grad_norm_sq", "grad_trace_sigma", "grad_noise_scale")


class NoiseScaleMeter:
    """Accumulates the noise-scale estimator over the measured steps of an epoch.

    ``parts_of(step)`` says in how many micro-batches the trainer runs optimizer step ``step``. On
    a measured step, call ``micro_batch_done()`` after every micro-batch's backward pass (the loss
    scaled by 1/parts, so ``p.grad`` ends the step as the effective batch's mean gradient) and
    ``step_done()`` after the last one, before the optimizer step; call ``epoch_values()`` after
    each evaluated epoch (it averages the steps since the last call).

    Args:
        params: The model's parameters (those with ``requires_grad``).
        small: Examples per micro-batch (b).
        parts: Micro-batches per measured step (n >= 2); the big batch is B = n b.
        every: Measure one optimizer step in ``every`` (the others run whole, unobserved).
    """

    def __init__(
        self, params: Iterable[torch.nn.Parameter], *, small: int, parts: int, every: int = 1
    ) -> None:
        if parts < 2:
            raise ValueError(f"the noise scale needs at least two micro-batches per step; got {parts}")
        self.params = [p for p in params if p.requires_grad]
        self.small, self.parts, self.big, self.every = small, parts, small * parts, every
        self._previous: torch.Tensor | None = None  # the gradients after the last micro-batch, flat
        self._done = 0  # micro-batches done in this step
        self._small_sq = None  # sum over this step's micro-batches of |g_b|^2
        self._steps = 0
        self._g2_sum = self._trace_sum = None

    def _flat_grads(self) -> torch.Tensor:
        """One flat copy of the gradients: a few element-wise ops on it are cheaper than the same
        ops over the model's dozens of small tensors."""
        return torch.cat([p.grad.reshape(-1) for p in self.params if p.grad is not None])

    @torch.no_grad()
    def micro_batch_done(self) -> None:
        grads = self._flat_grads()
        # p.grad started the step at zero (None); the micro-batch's own mean gradient is parts
        # times what its backward pass added
        change = grads if self._done == 0 else grads - self._previous
        sq = torch.dot(change, change).double() * self.parts**2
        self._small_sq = sq if self._small_sq is None else self._small_sq + sq
        self._previous = grads
        self._done += 1

    @torch.no_grad()
    def step_done(self) -> None:
        if self._done != self.parts:
            raise RuntimeError(f"step_done after {self._done} of {self.parts} micro-batches")
        small_sq = self._small_sq / self.parts  # mean |g_b|^2
        big_sq = torch.dot(self._previous, self._previous).double()  # |g_B|^2: the step's gradient
        b, big = self.small, self.big
        g2 = (big * big_sq - b * small_sq) / (big - b)
        trace = (small_sq - big_sq) / (1.0 / b - 1.0 / big)
        self._g2_sum = g2 if self._g2_sum is None else self._g2_sum + g2
        self._trace_sum = trace if self._trace_sum is None else self._trace_sum + trace
        self._steps += 1
        self._done, self._small_sq, self._previous = 0, None, None

    @classmethod
    def for_run(
        cls, params: Iterable[torch.nn.Parameter], *, effective: int, micro_batches: int
    ) -> NoiseScaleMeter:
        """The meter of a run: every step measured over its micro-batches, or, without accumulation,
        one step in HALVES_EVERY run as two halves (an odd batch cannot be halved; ``TrainConfig``
        refuses it)."""
        if micro_batches > 1:
            return cls(params, small=effective // micro_batches, parts=micro_batches)
        return cls(params, small=effective // 2, parts=2, every=HALVES_EVERY)

    def parts_of(self, step: int) -> int:
        """Micro-batches of optimizer step ``step`` (0-based) of a run whose own step is whole when
        ``every`` > 1: ``parts`` on a measured step, else 1."""
        if self.every == 1:
            return self.parts
        return self.parts if step % self.every == 0 else 1

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
