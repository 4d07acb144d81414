"""Model presets for small images, built with timm: the Swin, and two controls.

Three families, each at a parameter count and CPU cost near the Swin preset of its size:

* ``swin`` (``swin-nano``, ``swin-micro``): timm's SwinTransformer, shifted-window attention,
  LayerNorm. The model of the paper.
* ``vit`` (``vit-nano``, ``vit-micro``): timm's VisionTransformer, global attention over all
  patches (no windows, no shift), LayerNorm: is an effect specific to the shifted windows?
* ``bn-cnn`` (``bn-cnn-nano``, ``bn-cnn-micro``): timm's ResNet of basic blocks with BatchNorm,
  narrow, four stages of one block, its stem without pooling (as for small images).
  With BatchNorm each micro-batch is normalized with its own statistics and updates the running
  statistics once, so an accumulated step is *not* the larger batch: the one family in which
  accumulation itself, not the effective batch, can change the outcome.

The geometry below is the Swin's; the ViT takes the same padding and patch size, the CNN the same
padding.

A preset fixes width and depth; the geometry (input size, patch and window) follows the dataset's
native image size so that every stage's resolution is a whole number of windows:

=========  ======  =====  ======  ==================  ==================
native     input   patch  window  stage resolutions   windows per stage
=========  ======  =====  ======  ==================  ==================
8 px       8       2      2       4x4, 2x2            2x2, 1x1
28 px      32 (*)  4      4       8x8, 4x4            2x2, 1x1
32 px      32      4      4       8x8, 4x4            2x2, 1x1
=========  ======  =====  ======  ==================  ==================

(*) MNIST and Fashion-MNIST are zero-padded by 2 px on each side (black, their background) so that
patch 4 and window 4 tile them. Why this geometry, and not the 28 px / patch 2 / window 7 used
before: under the paper's baseline recipe (Adam 1e-3, batch 32) on 4,000 Fashion-MNIST images,
the old geometry learned far slower per epoch *and* ran about 3.5x slower per image (196 tokens in
windows of 49 vs 64 tokens in windows of 16). The figures are in docs/benchmarks.md ("Choosing the CPU
preset"), measured by ``python -m benchmarks.learnability``.

Presets:

* ``swin-nano``: the CPU preset (tests, quick and cpu budgets). On 20,480 Fashion-MNIST images
  under the paper's recipe it reaches 0.851 validation accuracy by epoch 10, above logistic
  regression on the same split (0.839).
* ``swin-micro``: the GPU preset (``standard`` budget); same geometry, three times wider. It must
  learn at least as fast per optimizer step as the CPU preset: on 10,240 Fashion-MNIST images,
  batch 32, it reached 0.712 / 0.774 / 0.772 after epochs 1-3 against swin-nano's 0.689 / 0.755 /
  0.771. The deeper 2+6-block version used before learned slower per step (0.646 / 0.722 after
  epochs 1-2) and was dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from timm.models.resnet import BasicBlock, ResNet
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer

from study.lib.config import FAMILIES


@dataclass(frozen=True)
class SwinPreset:
    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    mlp_ratio: float = 4.0


@dataclass(frozen=True)
class ViTPreset:
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0


@dataclass(frozen=True)
class CNNPreset:
    channels: tuple[int, ...]  # per stage; each stage after the first halves the resolution
    blocks: tuple[int, ...]  # basic blocks per stage


@dataclass(frozen=True)
class Geometry:
    """How images of one native size enter the model."""

    input_size: int  # the native image is zero-padded (centred) to this size
    patch_size: int
    window_size: int

    def padding(self, native_size: int) -> int:
        """Pixels of zero padding on each side of a ``native_size`` image."""
        extra = self.input_size - native_size
        if extra < 0 or extra % 2:
            raise ValueError(f"cannot pad {native_size} px images to {self.input_size} px evenly")
        return extra // 2


PRESETS: dict[str, SwinPreset | ViTPreset | CNNPreset] = {
    # ~0.14 M parameters: the CPU preset (about 2,000 training images/s on 2 cores at 28 px)
    "swin-nano": SwinPreset(embed_dim=32, depths=(2, 2), num_heads=(2, 4)),
    # ~1.2 M parameters: the GPU preset (2+6 blocks learned slower per step; module docstring)
    "swin-micro": SwinPreset(embed_dim=96, depths=(2, 2), num_heads=(3, 6)),
    # the controls, sized to the Swin preset of the same name (test_model prints the counts)
    "vit-nano": ViTPreset(embed_dim=48, depth=3, num_heads=3),
    "vit-micro": ViTPreset(embed_dim=128, depth=4, num_heads=4),
    "bn-cnn-nano": CNNPreset(channels=(12, 24, 48, 96), blocks=(1, 1, 1, 1)),
    "bn-cnn-micro": CNNPreset(channels=(32, 64, 128, 256), blocks=(1, 1, 1, 1)),
}

# Models other than the Swin presets, by name: a builder called with ``image_size``, ``in_chans``,
# ``num_classes``, ``dropout`` (the references of ``benchmarks.overfitting`` register theirs for
# their own process).
OTHER_MODELS: dict[str, Callable[..., torch.nn.Module]] = {}


def model_names() -> list[str]:
    """Every name ``TrainConfig.model`` accepts."""
    return [*PRESETS, *OTHER_MODELS]


def family_preset(family: str, swin_preset: str) -> str:
    """The preset of ``family`` at the size of ``swin_preset`` (``vit``, ``swin-nano`` -> ``vit-nano``)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}")
    return f"{family}-{swin_preset.rpartition('-')[2]}"


# native image size -> geometry; see the table in the module docstring
GEOMETRY: dict[int, Geometry] = {
    8: Geometry(input_size=8, patch_size=2, window_size=2),
    28: Geometry(input_size=32, patch_size=4, window_size=4),
    32: Geometry(input_size=32, patch_size=4, window_size=4),
}


def geometry_for(native_size: int) -> Geometry:
    if native_size not in GEOMETRY:
        raise ValueError(f"no Swin geometry for {native_size} px images; known: {sorted(GEOMETRY)}")
    return GEOMETRY[native_size]


def build_model(
    preset: str,
    *,
    image_size: int,
    in_chans: int,
    num_classes: int,
    dropout: float = 0.0,
    attn_dropout: float = 0.0,
    drop_path: float = 0.0,
    geometry: Geometry | None = None,
) -> torch.nn.Module:
    """Build the model of ``preset`` for ``image_size`` px inputs (already padded to the geometry's size).

    Args:
        preset: A key of ``PRESETS`` or of ``OTHER_MODELS``.
        image_size: Side of the square input the model sees (the geometry's ``input_size``).
        in_chans: Input channels (1 gray, 3 RGB).
        num_classes: Classifier outputs.
        dropout: Dropout on attention/MLP projections and before the head (the CNN: before the head).
        attn_dropout: Dropout on attention weights (the CNN has none).
        drop_path: Stochastic depth, rising linearly to this value at the last block.
        geometry: Patch and window size; default: the table's entry whose input size is
            ``image_size``. ``benchmarks.learnability`` passes others to compare them.
    """
    if preset in OTHER_MODELS:
        return OTHER_MODELS[preset](
            image_size=image_size, in_chans=in_chans, num_classes=num_classes, dropout=dropout
        )
    spec = PRESETS[preset]
    if isinstance(spec, CNNPreset):
        return _bn_cnn(spec, in_chans=in_chans, num_classes=num_classes, dropout=dropout, drop_path=drop_path)
    if geometry is None:
        matches = [g for g in GEOMETRY.values() if g.input_size == image_size]
        if not matches:
            known = sorted({g.input_size for g in GEOMETRY.values()})
            raise ValueError(f"no Swin geometry for {image_size} px inputs; known: {known}")
        geometry = matches[0]
    if isinstance(spec, ViTPreset):
        return VisionTransformer(img_size=image_size, patch_size=geometry.patch_size, in_chans=in_chans,
                                 num_classes=num_classes, embed_dim=spec.embed_dim, depth=spec.depth,
                                 num_heads=spec.num_heads, mlp_ratio=spec.mlp_ratio, global_pool="avg",
                                 class_token=False, drop_rate=dropout, proj_drop_rate=dropout,
                                 attn_drop_rate=attn_dropout, drop_path_rate=drop_path)  # fmt: skip
    return SwinTransformer(img_size=image_size, patch_size=geometry.patch_size, in_chans=in_chans,
                           num_classes=num_classes, embed_dim=spec.embed_dim, depths=spec.depths,
                           num_heads=spec.num_heads, window_size=geometry.window_size, mlp_ratio=spec.mlp_ratio,
                           drop_rate=dropout, proj_drop_rate=dropout, attn_drop_rate=attn_dropout,
                           drop_path_rate=drop_path)  # fmt: skip


def _bn_cnn(spec: CNNPreset, *, in_chans: int, num_classes: int, dropout: float, drop_path: float) -> ResNet:
    """timm's ResNet of basic blocks with its deep stem (three 3x3 convolutions, the first of stride
    2) and without its max pool, as for small images: 32 px inputs reach the first block at 16 px
    instead of 8 px (stride 1 there too cost the CPU four times the Swin's time per image)."""
    model = ResNet(BasicBlock, layers=spec.blocks, channels=spec.channels, in_chans=in_chans,
                   num_classes=num_classes, stem_type="deep", stem_width=spec.channels[0] // 2,
                   drop_rate=dropout, drop_path_rate=drop_path)  # fmt: skip
    model.maxpool = torch.nn.Identity()
    return model


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
