"""Stage `export`: the checkpoint as an ONNX model, and its parity with the checkpoint on the test split.

Writes models/stage-1.onnx (a DVC output, pushed to the remote like the checkpoint; the server
and `greenr predict` run it) and metrics/export.json (committed): for every ONNX backend
installed, the largest logit difference from the torch reference and the share of equal labels
on the test images. Fails (after writing the metrics) when an fp32 backend disagrees.

With `export.int8` (auto or true) it also writes models/stage-1.int8.onnx, the INT8 quantization
calibrated on training images (`export_int8`), and its parity per backend under `int8` in the
metrics; the model lists the backends that keep the test answers, and only they serve it. When none
does, `true` fails the stage and `auto` ships it offered nowhere. Switched off, that file is empty.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from greenr.atomic import write_bytes, write_json
from greenr.backends.base import TOLERANCE, Backend, ModelFile, compare, probabilities
from greenr.backends.export import OPSET, export_onnx
from greenr.backends.loading import BACKENDS, build, installed
from greenr.backends.model_file import load_model_file, read_model
from greenr.data.loader import Samples, batches, load_samples
from greenr.errors import GreenrError, exits_cleanly, setup_logging
from greenr.evaluation.metrics import bootstrap_intervals
from greenr.hardware import native_bf16, release_free_memory
from greenr.model.device import configure_threads
from greenr.params import EvaluateParams, ExportParams, load_section
from greenr.paths import EXPORT_METRICS, INT8_MODEL_PATH, MODEL_PATH, ONNX_MODEL_PATH, repo_root

log = logging.getLogger("stages.export")

# Images per backend call in the parity checks. Each backend keeps the activation buffers of the
# largest batch it has run: small batches keep the stage's peak memory low (docs/scale.md, memory).
# The figures compared do not depend on it.
PARITY_BATCH = 16

TestBatches = Callable[[], Iterable[np.ndarray]]


def logits_on_test(make: Callable[[], Backend], test_batches: TestBatches, classes: int) -> np.ndarray:
    """The logits of every test image, in order, from the backend `make()` builds, which is freed
    before this returns. One backend is alive at a time: each pass decodes the test split again,
    which costs less than the runtimes' buffers held side by side (docs/scale.md, memory)."""
    backend = make()
    parts = [backend.predict_logits(images) for images in test_batches()]
    del backend
    release_free_memory()
    return np.concatenate(parts) if parts else np.empty((0, classes), np.float32)


def int8_failure(passed: list[str], params: ExportParams) -> str | None:
    """Why the stage must fail over INT8, or None: only `export.int8: true` requires a backend to pass."""
    if passed or params.int8 is not True:
        return None
    return (
        f"the INT8 model changes the test answers on every backend (over {params.max_label_changes:.0%} of "
        f"the labels, or accuracy outside the fp32 interval; see {EXPORT_METRICS})"
    )


@dataclass(frozen=True)
class Int8Export:
    metrics: dict[str, Any]  # the `int8` section of metrics/export.json
    data: bytes  # the INT8 model file; empty when switched off
    failure: str | None = None  # why the stage must fail


def export_int8(
    train_set: Samples,
    exported: ModelFile,
    test_batches: TestBatches,
    reference: np.ndarray,
    labels: np.ndarray,
    threads: int,
) -> Int8Export:
    """Quantize the fp32 export to INT8 (greenr.backends.quantize), calibrated on training images, and
    check it on the test split against the torch reference (`reference`: its logits of the images
    `test_batches()` yields, in order; `labels`: their classes) on every ONNX backend installed.

    A backend passes when at most `export.max_label_changes` of the test labels change and the INT8
    accuracy stays inside the reference's bootstrap interval; the INT8 file lists those backends, and
    only they are offered INT8 at load."""
    from greenr.backends.quantize import nncf_version, quantize_int8, spread, with_quantization

    params: ExportParams = load_section("export")
    if not params.int8:
        log.info("export.int8 is false: no INT8 model (%s is written empty)", INT8_MODEL_PATH)
        return Int8Export({"enabled": False}, b"")
    evaluation: EvaluateParams = load_section("evaluate")
    spec = exported.spec
    calibration = train_set.subset(spread(len(train_set), params.calibration_images))
    started = time.perf_counter()
    images = (batch.images.numpy() for batch in batches(calibration, spec.preprocessing.image_size, PARITY_BATCH))
    # NNCF stops reading at the count, before the loader's end: closing the batches stops its workers.
    with contextlib.closing(images):
        quantized = quantize_int8(exported.data, images, len(calibration))
    release_free_memory()
    log.info("quantized to INT8 on %d training images in %.0f s", len(calibration), time.perf_counter() - started)

    def accuracy(logits: np.ndarray) -> tuple[float, list[float]]:
        probs = probabilities(logits, spec.temperature)
        interval = bootstrap_intervals(
            labels, probs, evaluation.bootstrap_samples, evaluation.confidence, evaluation.seed
        ).get("accuracy", [])
        return round(float(np.mean(probs.argmax(1) == labels)), 6), interval

    reference_accuracy, reference_interval = accuracy(reference)
    reference_probs = probabilities(reference, spec.temperature)
    candidate = read_model(with_quantization(quantized, INT8_MODEL_PATH, {"scheme": "int8"}), INT8_MODEL_PATH)
    parity: dict[str, dict[str, Any]] = {}
    for name, info in BACKENDS.items():
        if "onnx" not in info.formats or not installed(name):
            continue
        logits = logits_on_test(partial(build, name, candidate, "int8", threads), test_batches, len(spec.classes))
        acc, interval = accuracy(logits)
        changed = float(np.mean(logits.argmax(1) != reference.argmax(1)))
        inside = not reference_interval or reference_interval[0] <= acc <= reference_interval[1]
        parity[name] = {
            "label_agreement": round(1 - changed, 6),
            "max_abs_prob_diff": round(
                float(np.abs(probabilities(logits, spec.temperature) - reference_probs).max()), 6
            ),
            "max_abs_logit_diff": round(float(np.abs(logits - reference).max()), 6),
            "accuracy": acc,
            "accuracy_interval": interval,
            "passes": changed <= params.max_label_changes and inside,
        }
        log.info("INT8 on %s: %s", name, parity[name])
    passed = [name for name, result in parity.items() if result["passes"]]
    quantization = {
        "scheme": "int8",
        "tool": nncf_version(),
        "calibration_images": len(calibration),
        "backends": passed,
    }
    data = with_quantization(quantized, INT8_MODEL_PATH, quantization)
    metrics = {
        "enabled": True,
        **quantization,
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "reference": "torch fp32",
        "reference_accuracy": reference_accuracy,
        "reference_accuracy_interval": reference_interval,
        "max_label_changes": params.max_label_changes,
        "parity": parity,
    }
    failure = int8_failure(passed, params)
    return Int8Export(metrics, data, failure)


@exits_cleanly
def main() -> None:
    setup_logging()
    root = repo_root()
    threads = configure_threads(0)
    checkpoint_file = load_model_file(root / MODEL_PATH)
    ckpt = checkpoint_file.checkpoint
    data = export_onnx(ckpt)
    release_free_memory()  # the exporter's graph copies
    exported = read_model(data, ONNX_MODEL_PATH)
    test_set = load_samples(root, ["test"], ckpt.spec.classes)
    size, classes = ckpt.spec.image_size, len(ckpt.spec.classes)

    def test_batches() -> Iterable[np.ndarray]:
        return (batch.images.numpy() for batch in batches(test_set, size, PARITY_BATCH))

    reference = logits_on_test(partial(build, "torch", checkpoint_file, "fp32", threads), test_batches, classes)
    parity = {}
    for name, info in BACKENDS.items():
        if "onnx" not in info.formats or not installed(name):
            continue
        for precision in ("bf16", "fp32") if info.bf16 and native_bf16() else ("fp32",):
            key = f"{name}_{precision}"
            logits = logits_on_test(partial(build, name, exported, precision, threads), test_batches, classes)
            agreement = compare(logits, reference, TOLERANCE[precision])
            parity[key] = agreement.to_dict()
            log.info(
                "%s on %d test images: max |logit diff| %.2e, labels %.1f%% the same",
                key,
                len(reference),
                agreement.max_abs_diff,
                agreement.label_agreement * 100,
            )
    train_set = load_samples(root, ["train"], ckpt.spec.classes)
    int8 = export_int8(train_set, exported, test_batches, reference, test_set.labels, threads)
    report = {
        "checkpoint_sha256": ckpt.sha256,
        "onnx_sha256": hashlib.sha256(data).hexdigest(),
        "onnx_bytes": len(data),
        "opset": OPSET,
        "test_images": len(reference),
        "parity": parity,
        "int8": int8.metrics,
    }
    write_json(root / EXPORT_METRICS, report)
    failed = [key for key, result in parity.items() if key.endswith("_fp32") and not result["agrees"]]
    if not parity:
        raise GreenrError("no ONNX backend is installed to check the export", "install onnxruntime (`make setup`)")
    if failed:
        raise GreenrError(
            f"the ONNX export disagrees with the checkpoint on the test split ({', '.join(failed)}; see "
            f"{EXPORT_METRICS})",
            "check the exporter's warnings; an operator the exporter translates wrongly needs another opset",
        )
    if int8.failure:
        raise GreenrError(
            int8.failure,
            "set export.int8: auto in params.yaml to ship it unserved, false to skip it, or calibrate on more images",
        )
    write_bytes(root / ONNX_MODEL_PATH, data)
    log.info("wrote %s (%.1f MB, opset %d)", ONNX_MODEL_PATH, len(data) / 1e6, OPSET)
    write_bytes(root / INT8_MODEL_PATH, int8.data)
    if int8.data:
        backends = int8.metrics["backends"]
        where = f"served on {', '.join(backends)}" if backends else "served nowhere: no backend kept the test answers"
        log.info("wrote %s (%.1f MB; INT8 %s)", INT8_MODEL_PATH, len(int8.data) / 1e6, where)


if __name__ == "__main__":
    main()
