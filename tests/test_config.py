import math

import pytest

from study.lib.config import TrainConfig


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"accumulation_steps": 0}, "accumulation_steps must be an integer >= 1; got 0"),
        ({"batch_size": -4}, "batch_size must be an integer >= 1; got -4"),
        ({"epochs": 0}, "epochs must be an integer >= 1"),
        ({"dataset": "imagenet"}, "dataset must be one of digits, mnist, fashion-mnist, cifar10"),
        ({"model": "swin-huge"}, "model must be one of swin-nano, swin-micro"),
        ({"protocol": "magic"}, "protocol must be one of paper, memory"),
        ({"optimizer": "lion"}, "optimizer must be one of adam, adamw, sgd"),
        ({"lr_scaling": "cubic"}, "lr_scaling must be one of none, linear, sqrt"),
        ({"schedule": "step"}, "schedule must be one of constant, cosine"),
        ({"device": "tpu"}, "device must be one of auto, cpu, cuda"),
        ({"base_lr": 0.0}, "base_lr must be a positive number"),
        ({"base_lr": -1e-3}, "base_lr must be a positive number"),
        ({"weight_decay": -0.1}, "weight_decay must be >= 0"),
        ({"dropout": -0.1}, "dropout must be in [0, 1)"),
        ({"drop_path": 1.0}, "drop_path must be in [0, 1)"),
        ({"attn_dropout": 1.5}, "attn_dropout must be in [0, 1)"),
        ({"label_smoothing": -0.2}, "label_smoothing must be in [0, 1)"),
        ({"warmup_epochs": 11.0, "epochs": 10}, "warmup_epochs must be in [0, epochs=10]"),
        (
            {"protocol": "memory", "batch_size": 30, "accumulation_steps": 4},
            "batch_size 30 must be divisible by accumulation_steps 4 under the memory protocol",
        ),
        (
            {"batch_size": 512, "accumulation_steps": 4},
            "effective batch 2048 (batch_size 512, accumulation_steps 4, protocol paper) is larger "
            "than the training set (1293 images of digits)",
        ),
        ({"train_subset": 100, "batch_size": 101}, "is larger than the training set (100 images"),
        ({"train_subset": 0}, "train_subset must be in [1, 1293]"),
        ({"val_size": 1.5}, "val_size must be a fraction in (0, 1) or a whole count >= 1"),
        ({"val_size": 5000}, "val_size 5000 leaves no training data"),
    ],
)
def test_bad_config_names_the_field_and_what_is_allowed(changes, message):
    with pytest.raises(ValueError) as info:
        TrainConfig(**changes)
    assert message in str(info.value)


def test_paper_protocol_multiplies_the_batch():
    cfg = TrainConfig(batch_size=32, accumulation_steps=4, protocol="paper")
    assert (cfg.micro_batch_size, cfg.effective_batch_size) == (32, 128)


def test_memory_protocol_splits_the_batch():
    cfg = TrainConfig(batch_size=32, accumulation_steps=4, protocol="memory")
    assert (cfg.micro_batch_size, cfg.effective_batch_size) == (8, 32)


@pytest.mark.parametrize(
    ("rule", "effective", "expected"),
    [
        ("none", 128, 1e-3),
        ("linear", 32, 1e-3),
        ("linear", 64, 2e-3),
        ("linear", 256, 8e-3),
        ("linear", 16, 0.5e-3),
        ("sqrt", 128, 2e-3),
        ("sqrt", 512, 4e-3),
        ("sqrt", 8, 0.5e-3),
    ],
)
def test_lr_scaling_rule(rule, effective, expected):
    cfg = TrainConfig(
        dataset="mnist",
        batch_size=8,
        accumulation_steps=effective // 8,
        base_lr=1e-3,
        reference_batch_size=32,
        lr_scaling=rule,
    )
    assert cfg.effective_batch_size == effective
    assert math.isclose(cfg.lr, expected, rel_tol=1e-12)


def test_val_size_as_fraction_and_count():
    assert TrainConfig(dataset="mnist", val_size=0.1).num_val == 6000
    assert TrainConfig(dataset="mnist", val_size=5000).num_val == 5000
    assert TrainConfig(dataset="mnist", val_size=5000).num_train == 55_000
    assert TrainConfig(dataset="mnist", val_size=5000, train_subset=1000).num_train == 1000


def test_to_dict_records_derived_values():
    d = TrainConfig(batch_size=16, accumulation_steps=2, lr_scaling="linear").to_dict()
    assert d["effective_batch_size"] == 32 and d["micro_batch_size"] == 16 and d["lr"] == 1e-3
