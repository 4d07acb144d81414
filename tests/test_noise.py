"""The gradient noise scale: a known answer, the trainer's option, no extra passes."""

import math
import subprocess
import sys

import pytest
import torch

import study.lib.train
from study.lib import records
from study.lib.config import TrainConfig
from study.lib.noise import HALVES_EVERY, NOISE_KEYS, NoiseScaleMeter
from study.lib.train import train
from tests.test_train import TINY as TRAIN_TINY

TINY = {**TRAIN_TINY, "dropout": 0.0, "attn_dropout": 0.0, "drop_path": 0.0}  # exact updates
TIMING = {"wall_seconds", "train_seconds", "images_per_second", "peak_memory_bytes"}


# --- a known answer: least squares at a fixed point -----------------------------------------------
def least_squares(n=4096, d=8, noise=1.0, seed=0):
    """x ~ N(0, I), y = x.w* + noise; the model sits at w = w* + delta with |delta| = 1. Returns the
    data, the model and the analytic B_simple of the mean-loss 0.5 (x.w - y)^2 over these n points
    (per-example gradient x (x.w - y): G is their mean, Sigma their covariance)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    w_star = torch.randn(d, generator=g, dtype=torch.float64)
    y = x @ w_star + noise * torch.randn(n, generator=g, dtype=torch.float64)
    delta = torch.randn(d, generator=g, dtype=torch.float64)
    w = w_star + delta / delta.norm()
    per_example = x * (x @ w - y)[:, None]
    mean = per_example.mean(0)
    trace = ((per_example - mean) ** 2).sum(1).mean()
    model = torch.nn.Linear(d, 1, bias=False, dtype=torch.float64)
    with torch.no_grad():
        model.weight.copy_(w[None])
    return x, y, model, (trace / mean.pow(2).sum()).item()


def measure(x, y, model, *, small, parts, epochs=20, seed=0):
    """The trainer's accumulation path at a fixed point (no optimizer step): each micro-batch's
    mean loss scaled by 1/parts, backward, the meter; the step's gradient; zeroed again."""
    meter = NoiseScaleMeter(model.parameters(), small=small, parts=parts)
    g = torch.Generator().manual_seed(seed)
    big = small * parts
    estimates = []
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=g)
        for step in range(len(y) // big):
            idx = order[step * big : (step + 1) * big]
            for part in idx.split(small):
                loss = 0.5 * (model(x[part]).squeeze(1) - y[part]).pow(2).mean()
                (loss / parts).backward()
                meter.micro_batch_done()
            meter.step_done()
            model.zero_grad(set_to_none=True)
        estimates.append(meter.epoch_values())
    # average over epochs before the ratio, as within an epoch
    g2 = sum(e["grad_norm_sq"] for e in estimates) / epochs
    trace = sum(e["grad_trace_sigma"] for e in estimates) / epochs
    return trace / g2


def test_estimator_recovers_the_analytic_noise_scale_for_any_split():
    x, y, model, analytic = least_squares()
    assert 10 < analytic < 40  # a noise scale between the small and the big batches below
    estimates = {
        (small, parts): measure(x, y, model, small=small, parts=parts)
        for small, parts in [(8, 8), (16, 4), (32, 2), (64, 2)]
    }
    for split, estimate in estimates.items():
        assert abs(estimate - analytic) / analytic < 0.15, (split, estimate, analytic)
    # the same effective batch (64) split three ways agrees with itself
    same_batch = [estimates[s] for s in [(8, 8), (16, 4), (32, 2)]]
    assert (max(same_batch) - min(same_batch)) / analytic < 0.15


def test_the_stored_history_names_the_trainers_noise_keys():
    # study.lib.records keeps its own copy of the names (it loads no torch): the two must not drift
    assert records.NOISE_KEYS == NOISE_KEYS


def test_meter_needs_two_micro_batches_and_a_whole_step():
    model = torch.nn.Linear(2, 1)
    with pytest.raises(ValueError, match="at least two micro-batches"):
        NoiseScaleMeter(model.parameters(), small=4, parts=1)
    meter = NoiseScaleMeter(model.parameters(), small=4, parts=2)
    model(torch.ones(4, 2)).sum().backward()
    meter.micro_batch_done()
    with pytest.raises(RuntimeError, match="after 1 of 2"):
        meter.step_done()


# --- the trainer's option -------------------------------------------------------------------------
def _params(result):
    return torch.cat([p.detach().flatten() for p in result.model.parameters()])


def _without_timing(history):
    return [{k: v for k, v in m.items() if k not in TIMING} for m in history]


def test_option_off_records_exactly_what_it_did_and_on_changes_no_update():
    cfg = TrainConfig(**TINY, batch_size=8, accumulation_steps=4)
    off_run = train(cfg)
    off = off_run.to_dict()
    on = train(cfg.replace(noise_scale=True))
    fields = set(study.lib.train.EpochMetrics.__dataclass_fields__) - set(NOISE_KEYS)
    assert all(set(m) == fields for m in off["history"])  # no noise keys, not even as null
    assert not set(NOISE_KEYS) & set(off["final"])
    # the meter only reads gradients: the same updates, bit for bit, and the same metrics
    assert torch.equal(_params(off_run), _params(on))
    on_history = [{k: v for k, v in m.items() if k not in NOISE_KEYS} for m in on.to_dict()["history"]]
    assert _without_timing(on_history) == _without_timing(off["history"])
    for m in on.history:
        assert all(math.isfinite(getattr(m, key)) for key in ("grad_norm_sq", "grad_trace_sigma"))
        assert m.grad_trace_sigma > 0


def test_without_accumulation_two_halves_measure_and_the_update_stays_the_same():
    cfg = TrainConfig(**TINY, batch_size=32, weight_decay=0.05, optimizer="sgd")
    off, on = train(cfg), train(cfg.replace(noise_scale=True))
    torch.testing.assert_close(_params(on), _params(off), rtol=1e-5, atol=1e-7)
    assert on.final["micro_batch_size"] == 32  # the run's micro-batch, not the measurement's half
    assert all(m.grad_noise_scale is not None for m in on.history)


def test_estimator_inputs_come_without_a_second_forward_or_backward_pass(monkeypatch):
    """Count the training forward and backward passes and the samples they carry."""
    counts = {}
    build = study.lib.train.build_model

    def counting_build(*args, **kwargs):
        model = build(*args, **kwargs)

        def forward(module, inputs, output):
            if not module.training:
                return
            counts["forward"] = counts.get("forward", 0) + 1
            counts["forward samples"] = counts.get("forward samples", 0) + len(inputs[0])

            def backward(grad):  # runs when a backward pass goes through this forward's output
                counts["backward"] = counts.get("backward", 0) + 1
                counts["backward samples"] = counts.get("backward samples", 0) + len(grad)

            output.register_hook(backward)

        model.register_forward_hook(forward)
        return model

    monkeypatch.setattr(study.lib.train, "build_model", counting_build)

    def passes(**changes):
        counts.clear()
        train(TrainConfig(**{**TINY, **changes}))
        return dict(counts)

    accumulated = dict(batch_size=8, accumulation_steps=4)
    assert passes(**accumulated, noise_scale=True) == passes(**accumulated)
    plain_on, plain_off = passes(batch_size=32, noise_scale=True), passes(batch_size=32)
    # without accumulation one step in HALVES_EVERY runs as two halves: the same samples, each once
    assert plain_on["forward samples"] == plain_off["forward samples"] == 2 * 5 * 32
    assert plain_on["backward samples"] == plain_off["backward samples"]
    measured = len(range(0, 2 * 5, HALVES_EVERY))  # steps 0 and 8 of the 10
    assert plain_on["forward"] == plain_off["forward"] + measured == 10 + 2


def test_odd_batch_without_accumulation_is_refused():
    with pytest.raises(ValueError, match="batch 33 is odd"):
        TrainConfig(**TINY, batch_size=33, noise_scale=True)
    TrainConfig(**TINY, batch_size=11, accumulation_steps=3, noise_scale=True)  # splits by itself
    proc = subprocess.run(
        [sys.executable, "-m", "study.train", "--dataset", "digits", "--batch-size", "33", "--noise-scale"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("study.train: error: ") and "is odd" in lines[0]
