"""A checkpoint exported to ONNX: uint8 images in, logits out, with the model's spec as metadata.

The graph starts with the normalisation (greenr.data.tensors.normalize), so an ONNX backend
takes the same uint8 arrays the torch backend does and nothing outside the file can get the
mean/std wrong. The batch dimension is dynamic. The metadata (`greenr`, JSON) holds the
checkpoint's spec (greenr.model.spec: classes, preprocessing, arch, temperature, ...), the
checkpoint's SHA-256, and the reference (torch fp32) logits of the probe batch (greenr.backends.base).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from greenr.backends.base import probe_batch
from greenr.backends.model_file import ONNX_METADATA_KEY
from greenr.data.images import Preprocessing
from greenr.model.checkpoint import Checkpoint
from greenr.model.inference import predict_logits

OPSET = 17
INPUT_NAME = "images"
OUTPUT_NAME = "logits"

log = logging.getLogger(__name__)


class Normalized(nn.Module):
    """uint8 (N, 3, S, S) -> logits: the checkpoint's model behind its own normalisation."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, model: nn.Module, spec: Preprocessing) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1) * 255)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images.float() - self.mean) / self.std)


def reference_logits(model: nn.Module, spec: Preprocessing) -> np.ndarray:
    """The torch fp32 logits of the probe batch: what every backend is checked against."""
    return predict_logits(model, torch.from_numpy(probe_batch(spec.image_size)), spec).numpy()


def export_onnx(ckpt: Checkpoint) -> bytes:
    """The ONNX model (bytes) of a checkpoint, metadata included."""
    import onnx

    model = ckpt.build("cpu")
    # The exporter traces a contiguous (NCHW) model; channels_last is a torch-side speed-up only.
    model = model.to(memory_format=torch.contiguous_format)
    wrapper = Normalized(model, ckpt.spec.preprocessing).eval()
    example = torch.from_numpy(probe_batch(ckpt.spec.image_size, 2))
    with tempfile.TemporaryDirectory(prefix="greenr-export-") as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        path = Path(folder) / "model.onnx"
        torch.onnx.export(
            wrapper,
            (example,),
            path,
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
        proto = onnx.load_model(str(path))
    spec = dataclasses.replace(
        ckpt.spec,
        checkpoint_sha256=ckpt.sha256,
        reference_logits=reference_logits(ckpt.build("cpu"), ckpt.spec.preprocessing),
    )
    entry = proto.metadata_props.add()
    entry.key = ONNX_METADATA_KEY
    entry.value = json.dumps(spec.to_dict(), sort_keys=True)
    proto.producer_name = "greenr"
    onnx.checker.check_model(proto)
    return proto.SerializeToString()
