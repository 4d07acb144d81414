"""The model families: each trains on the CPU, and accumulation is the larger batch exactly where
the model has no BatchNorm (the mechanism, checked on one optimizer step)."""

import copy

import pytest
import torch

from study.lib.config import FAMILIES, TrainConfig, family_of
from study.lib.model import build_model, count_parameters, family_preset
from study.lib.train import optimizer_step, train

TINY = dict(dataset="digits", train_subset=160, val_size=100, train_eval_size=100, epochs=3, device="cpu",
            base_lr=1e-3, batch_size=16)  # fmt: skip


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_trains_on_the_cpu_and_records_its_family(family):
    result = train(TrainConfig(**TINY, model=family_preset(family, "swin-nano")))
    losses = [m.train_loss for m in result.history]
    assert result.status == "completed" and losses[-1] < losses[0]
    assert result.config["family"] == family


def test_family_presets_are_near_the_swin_in_size():
    sizes = {f: count_parameters(build_model(family_preset(f, "swin-nano"), image_size=32, in_chans=3,
                                             num_classes=10)) for f in FAMILIES}  # fmt: skip
    assert all(0.5 < sizes[f] / sizes["swin"] < 1.5 for f in FAMILIES), sizes
    assert family_of("bn-cnn-micro") == "bn-cnn" and family_of("mlp") == "mlp"
    with pytest.raises(ValueError, match="unknown model family"):
        family_preset("resnet", "swin-nano")


def _step(model: torch.nn.Module, x, y, parts: int) -> torch.Tensor:
    """The parameters after one SGD step on (x, y) split into ``parts`` micro-batches."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer_step(model, optimizer, x, y, parts=parts, autocast=torch.autocast("cpu", enabled=False))
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _accumulated_and_large_batch(family: str, *, bn_eval: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model(family_preset(family, "swin-nano"), image_size=32, in_chans=3, num_classes=10)
    model.train()
    if bn_eval:  # BatchNorm normalizes with its running statistics, the same for every micro-batch
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
    x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    return _step(copy.deepcopy(model), x, y, parts=4), _step(copy.deepcopy(model), x, y, parts=1)


@pytest.mark.parametrize("family", ["swin", "vit"])
def test_layernorm_families_accumulated_step_is_the_larger_batch(family):
    accumulated, large = _accumulated_and_large_batch(family)
    torch.testing.assert_close(accumulated, large, rtol=1e-5, atol=1e-6)


def test_batchnorm_accumulated_step_differs_from_the_larger_batch_because_of_batch_statistics():
    accumulated, large = _accumulated_and_large_batch("bn-cnn")
    # train-mode BatchNorm: each micro-batch of 8 is normalized with its own statistics
    assert ((accumulated - large).norm() / (large - _initial("bn-cnn")).norm()).item() > 1e-2
    accumulated, large = _accumulated_and_large_batch("bn-cnn", bn_eval=True)
    torch.testing.assert_close(accumulated, large, rtol=1e-5, atol=1e-6)  # the mechanism, not noise


def _initial(family: str) -> torch.Tensor:
    torch.manual_seed(0)
    model = build_model(family_preset(family, "swin-nano"), image_size=32, in_chans=3, num_classes=10)
    return torch.cat([p.detach().flatten() for p in model.parameters()])
