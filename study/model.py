"""Swin presets for small images, built with timm's SwinTransformer.

A preset fixes width and depth; the geometry (patch and window size) follows the image size so that
every stage's resolution is a whole number of windows:

=========  =====  ======  ========================  ===========================
image      patch  window  stage resolutions         windows per stage
=========  =====  ======  ========================  ===========================
8 px       2      2       4x4, 2x2                  2x2, 1x1
28 px      2      7       14x14, 7x7                2x2, 1x1
32 px      2      4       16x16, 8x8                4x4, 2x2
=========  =====  ======  ========================  ===========================

``swin-nano`` is CPU-sized (quick studies, tests); ``swin-micro`` is GPU-sized.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.models.swin_transformer import SwinTransformer


@dataclass(frozen=True)
class SwinPreset:
    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    mlp_ratio: float = 4.0


PRESETS: dict[str, SwinPreset] = {
    # ~0.14 M parameters: seconds per epoch on digits on a CPU
    "swin-nano": SwinPreset(embed_dim=32, depths=(2, 2), num_heads=(2, 4)),
    # ~3.0 M parameters: the GPU preset
    "swin-micro": SwinPreset(embed_dim=96, depths=(2, 6), num_heads=(3, 6)),
}

# image size -> (patch size, window size); see the table in the module docstring
GEOMETRY: dict[int, tuple[int, int]] = {8: (2, 2), 28: (2, 7), 32: (2, 4)}


def build_model(
    preset: str,
    *,
    image_size: int,
    in_chans: int,
    num_classes: int,
    dropout: float = 0.0,
    attn_dropout: float = 0.0,
    drop_path: float = 0.0,
) -> torch.nn.Module:
    """Build a Swin Transformer for ``image_size`` px images.

    Args:
        preset: A key of ``PRESETS``.
        image_size: Side of the square input (8, 28 or 32).
        in_chans: Input channels (1 gray, 3 RGB).
        num_classes: Classifier outputs.
        dropout: Dropout on attention/MLP projections and before the head.
        attn_dropout: Dropout on attention weights.
        drop_path: Stochastic depth, rising linearly to this value at the last block.
    """
    spec = PRESETS[preset]
    if image_size not in GEOMETRY:
        raise ValueError(f"no Swin geometry for {image_size} px images; known: {sorted(GEOMETRY)}")
    patch_size, window_size = GEOMETRY[image_size]
    return SwinTransformer(
        img_size=image_size,
        patch_size=patch_size,
        in_chans=in_chans,
        num_classes=num_classes,
        embed_dim=spec.embed_dim,
        depths=spec.depths,
        num_heads=spec.num_heads,
        window_size=window_size,
        mlp_ratio=spec.mlp_ratio,
        drop_rate=dropout,
        proj_drop_rate=dropout,
        attn_drop_rate=attn_dropout,
        drop_path_rate=drop_path,
    )


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
