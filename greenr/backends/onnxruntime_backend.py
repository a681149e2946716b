"""ONNX Runtime on the CPU (fp32): the ONNX export, graph-optimised, with a fixed thread count."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from greenr.backends.base import Backend, ModelFile


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, model: ModelFile, precision: str, threads: int) -> None:
        super().__init__(model, precision, threads)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle threads sleep instead of spinning: in the server, image decoding runs beside the
        # model, and on a shared machine spinning threads take the cores from everyone else.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self._session = ort.InferenceSession(model.data, options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name

    def forward(self, images: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input: images})[0]
