"""Weights trained on the 7-bit grid, so int8 runs exact on the fast kernels of every CPU.

On x86 CPUs without VNNI, onnxruntime's u8 x s8 kernels add each pair of
products with VPMADDUBSW, which saturates at 16 bits: 255 * 127 * 2 overflows.
With weights of at most 64 in magnitude (7 bits) no pair can overflow
(255 * 64 * 2 = 32640), so those kernels are exact, and about a quarter faster
than the u8 x u8 ones the stall otherwise falls back to.  Quantising an 8-bit
network to 7 bits after training costs 6 to 9 points of top-1 here; training
with the weights already on the 7-bit grid (a straight-through estimator)
lets the network adapt to it.  Depthwise convolutions keep 8 bits: onnxruntime's
depthwise kernel does not saturate.

The grid is onnxruntime's: symmetric, per output channel, ``scale = max|w| / 64``
(``quantize_static(reduce_range=True)``).  Per-channel symmetric rounding
commutes with multiplying a channel by any factor, so the grid of a
convolution's own weight is also the grid of the weight with its batch norm
folded in, which is what onnxruntime quantises.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

# onnxruntime's reduced int8 range is [-64, 64] (quant_utils.ONNX_INT_TYPE_REDUCED_RANGE)
REDUCED_LEVELS = 64


class WeightGrid(nn.Module):
    """Per-output-channel symmetric fake quantisation with a straight-through gradient."""

    def __init__(self, levels: int = REDUCED_LEVELS) -> None:
        super().__init__()
        self.levels = levels

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w + (on_grid(w.detach(), self.levels) - w).detach()


def on_grid(w: torch.Tensor, levels: int = REDUCED_LEVELS) -> torch.Tensor:
    """``w`` rounded to ``levels`` steps either side of zero, each output channel scaled to its max."""
    dims = tuple(range(1, w.ndim))
    scale = w.abs().amax(dim=dims, keepdim=True).clamp_min(1e-12) / levels
    return torch.clamp(torch.round(w / scale), -levels, levels) * scale


def convolutions(net: nn.Module) -> list[nn.Conv2d]:
    return [m for m in net.modules() if isinstance(m, nn.Conv2d)]


def gemm_convolutions(net: nn.Module) -> list[nn.Conv2d]:
    """The convolutions onnxruntime computes as matrix products (all but the depthwise ones).

    Only those saturate: its depthwise int8 kernel accumulates exactly (a test
    checks), so depthwise weights, the most sensitive ones with 9 or 25 weights
    per channel, keep all 8 bits.
    """
    return [m for m in convolutions(net) if m.groups == 1]


def train_on_grid(net: nn.Module, levels: int = REDUCED_LEVELS) -> int:
    """Put every matrix-product convolution's weight on the grid for training; returns how many."""
    convs = gemm_convolutions(net)
    for conv in convs:
        if not parametrize.is_parametrized(conv, "weight"):
            parametrize.register_parametrization(conv, "weight", WeightGrid(levels))
    return len(convs)


def bake(net: nn.Module) -> None:
    """Leave each convolution with its on-grid weight as a plain parameter (for saving, export)."""
    for conv in convolutions(net):
        if parametrize.is_parametrized(conv, "weight"):
            parametrize.remove_parametrizations(conv, "weight", leave_parametrized=True)
