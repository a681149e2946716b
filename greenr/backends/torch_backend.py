"""The reference backend: the checkpoint's own PyTorch model, eager, on the CPU.

Imported only when this backend is asked for (greenr.backends.loading), so that serving an ONNX
model never loads torch. bf16 runs under autocast (matmuls and convolutions in bf16).
"""

from __future__ import annotations

import numpy as np
import torch

from greenr.backends.base import Backend, ModelFile
from greenr.errors import GreenrError
from greenr.model.inference import CPU_FORWARD_IMAGES, predict_logits


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, model: ModelFile, precision: str, threads: int) -> None:
        super().__init__(model, precision, threads)
        if model.checkpoint is None:
            raise GreenrError(
                f"the torch backend runs PyTorch checkpoints; {model.name} is an ONNX model",
                "serve the checkpoint (MODEL_PATH=models/stage-1.pth) or use BACKEND=auto",
            )
        if threads:
            torch.set_num_threads(threads)
        self._model = model.checkpoint.build("cpu")

    def forward(self, images: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(images)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            logits = predict_logits(self._model, batch, self.spec.preprocessing, batch_size=CPU_FORWARD_IMAGES)
        return logits.numpy()
