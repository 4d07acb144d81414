import json
import math
import subprocess
import sys

import pytest
import torch

from study.lib.config import TrainConfig
from study.lib.model import build_model
from study.lib.train import DIVERGED, STOPPED, learning_rate, parameter_groups, train

# Tiny, fast runs: digits (8x8), the CPU preset, a 160-image subset
TINY = dict(
    dataset="digits",
    model="swin-nano",
    train_subset=160,
    val_size=100,
    train_eval_size=100,
    epochs=2,
    device="cpu",
    base_lr=1e-3,
)


def tiny(**changes) -> TrainConfig:
    return TrainConfig(**{**TINY, **changes})


def _params(result):
    return torch.cat([p.detach().flatten() for p in result.model.parameters()])


PROTOCOL_PAIRS = [
    # paper protocol: 4 micro-batches of 8 vs one batch of 32
    (
        dict(protocol="paper", batch_size=32, accumulation_steps=1),
        dict(protocol="paper", batch_size=8, accumulation_steps=4),
    ),
    # memory protocol: effective batch 32 split into 4 micro-batches of 8
    (
        dict(protocol="memory", batch_size=32, accumulation_steps=1),
        dict(protocol="memory", batch_size=32, accumulation_steps=4),
    ),
]


@pytest.mark.parametrize("noise_scale", [False, True])  # measuring the noise scale changes no update
@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
@pytest.mark.parametrize(("one_batch", "accumulated"), PROTOCOL_PAIRS)
def test_accumulation_is_exact(one_batch, accumulated, optimizer, noise_scale):
    base = tiny(
        dropout=0.0,
        drop_path=0.0,
        attn_dropout=0.0,
        weight_decay=0.05,
        optimizer=optimizer,
        noise_scale=noise_scale,
    )
    a = train(base.replace(**one_batch))
    b = train(base.replace(**accumulated))
    assert a.final["optimizer_steps"] == b.final["optimizer_steps"] == 10  # 2 epochs x 160 // 32
    initial = build_model("swin-nano", image_size=8, in_chans=1, num_classes=10)
    moved = (_params(a) - torch.cat([p.flatten() for p in initial.parameters()])).norm()
    assert moved > 1e-3  # the runs did train
    pa, pb = _params(a), _params(b)
    # The whole parameter vector agrees within 1e-5 relative. SGD is linear in the gradient, so
    # each element agrees too; Adam divides by sqrt(v), which turns float round-off in near-zero
    # gradients into element-wise differences far below its step size (about 1e-6 here).
    assert ((pa - pb).norm() / pa.norm()).item() < 1e-5
    if optimizer == "sgd":
        torch.testing.assert_close(pb, pa, rtol=1e-5, atol=1e-7)
    assert math.isclose(a.final["train_loss"], b.final["train_loss"], rel_tol=1e-5)


def test_paper_protocol_makes_fewer_optimizer_steps():
    base = tiny(batch_size=8)
    plain, accumulated = train(base), train(base.replace(accumulation_steps=4))
    assert plain.final["optimizer_steps"] == 40 and accumulated.final["optimizer_steps"] == 10
    assert plain.final["samples_seen"] == accumulated.final["samples_seen"] == 320


@pytest.mark.parametrize("step", [0, 3, 50, 99])
def test_constant_schedule_without_warmup_is_flat(step):
    assert learning_rate(step, peak_lr=0.1, total_steps=100, warmup_steps=0, schedule="constant") == 0.1


def test_warmup_rises_linearly_to_the_peak():
    lrs = [
        learning_rate(s, peak_lr=1.0, total_steps=100, warmup_steps=10, schedule="constant")
        for s in range(12)
    ]
    assert lrs[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert lrs[10:] == [1.0, 1.0]


def test_cosine_decays_from_the_peak_to_zero():
    lrs = [
        learning_rate(s, peak_lr=2.0, total_steps=110, warmup_steps=10, schedule="cosine") for s in range(111)
    ]
    assert lrs[9] == pytest.approx(2.0) and lrs[10] == pytest.approx(2.0)
    assert lrs[60] == pytest.approx(1.0)  # halfway through the decay
    assert lrs[110] == pytest.approx(0.0, abs=1e-12)
    assert all(x >= y for x, y in zip(lrs[10:-1], lrs[11:], strict=True))


def test_norms_biases_and_position_tables_are_not_decayed():
    model = build_model("swin-nano", image_size=32, in_chans=1, num_classes=10)
    decay, no_decay = parameter_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert any("relative_position_bias_table" in n for n in no_decay_names)
    assert any(n.endswith("norm1.weight") for n in no_decay_names)
    assert any(n.endswith("qkv.bias") for n in no_decay_names)
    assert all(p.ndim >= 2 and "relative_position" not in names[id(p)] for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_same_seed_same_result_on_cpu():
    cfg = tiny(batch_size=16, dropout=0.1, drop_path=0.1)
    a, b = train(cfg), train(cfg)
    assert torch.equal(_params(a), _params(b))
    assert [m.val_accuracy for m in a.history] == [m.val_accuracy for m in b.history]
    c = train(cfg.replace(seed=1))
    assert not torch.equal(_params(a), _params(c))


def test_absurd_learning_rate_ends_as_diverged():
    result = train(tiny(batch_size=16, base_lr=1e6, epochs=3))
    assert result.status == DIVERGED
    assert len(result.history) == 1  # stopped at the first check, not after all epochs
    assert result.to_dict()["final"]["train_loss"] is None  # NaN is written as null in JSON


def test_on_epoch_can_stop_the_run():
    seen = []
    result = train(tiny(batch_size=16, epochs=5), on_epoch=lambda m: seen.append(m) or m.epoch == 2)
    assert result.status == STOPPED and [m.epoch for m in seen] == [1, 2]
    assert result.final["epochs_trained"] == 2


def test_every_epoch_records_the_metrics():
    result = train(tiny(batch_size=16))
    for m in result.history:
        assert 0 <= m.train_accuracy <= 1 and 0 <= m.val_accuracy <= 1
        assert m.generalization_gap == pytest.approx(m.train_accuracy - m.val_accuracy)
        assert m.images_per_second > 0 and m.peak_memory_bytes > 0 and m.wall_seconds > 0
    assert [m.optimizer_steps for m in result.history] == [10, 20]
    assert [m.samples_seen for m in result.history] == [160, 320]


def test_short_digits_run_learns_far_above_chance():
    cfg = TrainConfig(
        dataset="digits", model="swin-nano", batch_size=16, epochs=5, base_lr=1e-3, device="cpu"
    )
    result = train(cfg)
    assert result.status == "completed"
    assert result.final["val_accuracy"] > 0.8  # chance is 0.1
    assert result.final["test_accuracy"] > 0.8


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "study.train", *args], capture_output=True, text=True)


def test_cli_prints_json_with_status_config_history_and_final():
    proc = _cli(
        "--train-subset",
        "160",
        "--val-size",
        "100",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--accumulation-steps",
        "2",
        "--lr-scaling",
        "linear",
        "--json",
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["status"] == "completed" and len(out["history"]) == 2
    assert out["config"]["effective_batch_size"] == 16 and out["config"]["lr"] == pytest.approx(5e-4)
    for key in (
        "train_accuracy",
        "val_accuracy",
        "val_loss",
        "test_accuracy",
        "generalization_gap",
        "optimizer_steps",
        "samples_seen",
        "wall_seconds",
        "images_per_second",
        "peak_memory_bytes",
        "lr",
    ):
        assert key in out["final"], key


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--accumulation-steps", "0"], "accumulation_steps must be an integer >= 1"),
        (["--dataset", "imagenet"], "dataset must be one of"),
        (["--batch-size", "abc"], "argument --batch-size: invalid int value: 'abc'"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(args, message):
    proc = _cli(*args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("study.train: error: ") and message in lines[0]
    assert proc.stdout == ""


def test_cpu_preset_learns_real_fashion_mnist(tmp_path):
    """The CPU preset learns the real task: 2 epochs on 2,048 Fashion-MNIST images.

    Measured once (2-core CPU, seed 0): validation accuracy 0.458 / 0.530 per epoch with the padded
    32 px / patch 4 / window 4 geometry; the geometry used before (28 px, patch 2, window 7) reached
    0.300 / 0.410 on the same run. The threshold sits between the two."""
    from study.lib.data import DEBIAN_FASHION_MNIST
    from tests.conftest import require

    require(
        DEBIAN_FASHION_MNIST.is_dir(),
        "Debian dataset-fashion-mnist absent: apt-get install dataset-fashion-mnist",
    )
    cfg = TrainConfig(
        dataset="fashion-mnist",
        data_dir=str(tmp_path),
        model="swin-nano",
        train_subset=2048,
        val_size=2000,
        train_eval_size=256,
        epochs=2,
        batch_size=32,
        device="cpu",
        seed=0,
    )
    result = train(cfg)
    assert result.final["val_accuracy"] > 0.48


def test_the_step_splits_the_effective_batch_into_equal_micro_batches_of_the_same_samples():
    """optimizer_step is the one place a batch is split: N micro-batches of B / N, in order, whose
    concatenation is the effective batch the epoch drew."""
    from study.lib.train import optimizer_step

    seen = []

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(4, 10))

        def forward(self, x):
            seen.append(x.clone())
            return x @ self.w

    net = Recorder()
    x, y = torch.randn(32, 4), torch.randint(0, 10, (32,))
    optimizer_step(net, torch.optim.SGD(net.parameters(), lr=0.1), x, y, parts=4,
                   autocast=torch.autocast("cpu", enabled=False))  # fmt: skip
    assert [len(m) for m in seen] == [8, 8, 8, 8] and torch.equal(torch.cat(seen), x)


def test_evaluation_on_a_schedule_records_the_evaluated_epochs_only():
    result = train(tiny(batch_size=16, epochs=7, eval_every=3), test_at=(2,))
    assert [m.epoch for m in result.history] == [2, 3, 6, 7]  # every 3rd, the asked epoch 2, the last
    assert [m.optimizer_steps for m in result.history] == [20, 30, 60, 70]  # steps count every epoch
    assert result.history[0].test_accuracy is not None and result.history[1].test_accuracy is None
    assert result.final["epochs_trained"] == 7
    # the running train loss averages the steps since the previous evaluation; the eval-mode train
    # loss is measured on the fixed training subset, without dropout
    for m in result.history:
        assert math.isfinite(m.train_loss) and 0 < m.train_eval_loss < 5


def test_pruning_sees_only_evaluated_epochs():
    seen = []
    result = train(
        tiny(batch_size=16, epochs=6, eval_every=2), on_epoch=lambda m: seen.append(m.epoch) or m.epoch == 4
    )
    assert seen == [2, 4] and result.status == STOPPED and result.final["epochs_trained"] == 4


def test_the_eval_mode_train_loss_is_the_loss_of_the_fixed_subset():
    from study.lib.data import make_splits
    from study.lib.train import evaluate

    result = train(tiny(batch_size=16, epochs=1))
    data = make_splits(tiny(), torch.device("cpu"), input_size=8)
    loss, accuracy = evaluate(result.model, data.train_eval_images, data.train_eval_labels, data,
                              autocast=torch.autocast("cpu", enabled=False), channels_last=False)  # fmt: skip
    assert result.history[-1].train_eval_loss == pytest.approx(loss)
    assert result.history[-1].train_accuracy == pytest.approx(accuracy)


def test_cifar10_augmentation_is_on_by_default_and_can_be_switched_off(tmp_path):
    from study.lib.data import make_splits
    from tests.conftest import write_cifar10

    write_cifar10(tmp_path / "cifar-10-batches-py", per_batch=40)
    cfg = TrainConfig(dataset="cifar10", data_dir=str(tmp_path), val_size=20, batch_size=8, device="cpu")
    assert make_splits(cfg, torch.device("cpu")).augment
    assert not make_splits(cfg.replace(augment=False), torch.device("cpu")).augment
    digits = TrainConfig(dataset="digits", device="cpu")
    assert not make_splits(digits, torch.device("cpu")).augment  # no standard augmentation there


def test_cifar10_cpu_preset_learns_real_cifar10(real_cifar10):
    """The CIFAR-10 cpu budget's preset learns the real task: swin-nano on its 2,560 training images
    (micro-batch 128, the budget's augmentation) reaches above 0.40 validation accuracy after 50
    epochs. The 256-unit MLP trained in the same loop on the same images never gets there: its
    best over 200 epochs was 0.392 (``python -m benchmarks.overfitting --settings 2560x200``);
    measured once here, this run gives 0.418."""
    cfg = TrainConfig(dataset="cifar10", data_dir=str(real_cifar10), model="swin-nano", train_subset=2560,
                      val_size=5000, train_eval_size=500, epochs=50, eval_every=50, batch_size=128,
                      device="cpu", seed=0)  # fmt: skip
    result = train(cfg)
    assert result.final["val_accuracy"] > 0.40


def test_adam_is_adamw_without_weight_decay_bit_for_bit():
    """The grid's optimizer (Adam, no weight decay) and the search's (AdamW) are one optimizer: with
    weight decay 0 the two updates are the same, bit for bit, so the whole experiment uses AdamW."""
    cfg = tiny(batch_size=16, dropout=0.1)
    adam, adamw = (
        train(cfg.replace(optimizer="adam")),
        train(cfg.replace(optimizer="adamw", weight_decay=0.0)),
    )
    assert torch.equal(_params(adam), _params(adamw))
