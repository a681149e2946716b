"""OpenVINO on the CPU: reads the ONNX export directly; fp32, bf16 where the CPU has it, or the INT8 export.

OpenVINO would pick bf16 by itself on CPUs with AMX; the precision is always set explicitly so
that what serves is what was checked against the reference. The INT8 export carries its own
quantize/dequantize pairs, which OpenVINO runs as int8 kernels; what is left between them runs f32.
"""

from __future__ import annotations

import threading

import numpy as np
import openvino as ov

from greenr.backends.base import Backend, ModelFile

HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
_core: ov.Core | None = None
_core_lock = threading.Lock()


def shared_core() -> ov.Core:
    """One OpenVINO Core for the process, never released (OpenVINO's own advice): a Core per
    backend, built in parallel threads and dropped after compiling, lets the CPU plugin be torn down
    while its thread pool may still run, which crashed a long test session at random points."""
    global _core
    with _core_lock:
        if _core is None:
            _core = ov.Core()
        return _core


class OpenVinoBackend(Backend):
    name = "openvino"

    def __init__(self, model: ModelFile, precision: str, threads: int) -> None:
        super().__init__(model, precision, threads)
        core = shared_core()
        network = core.read_model(model.data)
        config = {
            "INFERENCE_PRECISION_HINT": HINTS[precision],
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self._compiled = core.compile_model(network, "CPU", config)
        self._request = self._compiled.create_infer_request()
        self._output = self._compiled.output(0)

    def forward(self, images: np.ndarray) -> np.ndarray:
        # share_inputs: the request reads the caller's array instead of copying it first.
        result = self._request.infer({0: images}, share_inputs=True)
        # The request reuses its output buffer: copy before the next call overwrites it.
        return np.array(result[self._output], dtype=np.float32, copy=True)

    def effective_precision(self) -> str:
        """OpenVINO keeps f32 where the CPU cannot do bf16, whatever the hint said."""
        if self.precision == "int8":  # set by the file's quantize/dequantize pairs, not by a hint
            return "int8"
        # An ov.Type, whose str() is "<Type: 'bfloat16'>": compare the type, not its spelling.
        hint = self._compiled.get_property("INFERENCE_PRECISION_HINT")
        return "bf16" if hint == ov.Type.bf16 else "fp32"
