"""Stage `export`: the checkpoint as an ONNX model, and its parity with the checkpoint on the test split.

Writes models/stage-1.onnx (a DVC output, pushed to the remote like the checkpoint; the server
and `greenr predict` run it) and metrics/export.json (committed): for every ONNX backend
installed, the largest logit difference from the torch reference and the share of equal labels
on the test images. Fails (after writing the metrics) when an fp32 backend disagrees.
"""

from __future__ import annotations

import hashlib
import logging

from greenr.atomic import write_bytes, write_json
from greenr.backends.base import TOLERANCE, compare
from greenr.backends.loading import BACKENDS, build, installed
from greenr.backends.model_file import load_model_file, read_model
from greenr.data.dataset import read_manifest
from greenr.data.tensors import load_tensors
from greenr.errors import GreenrError, exits_cleanly, setup_logging
from greenr.hardware import native_bf16
from greenr.model.device import configure_threads
from greenr.model.export import OPSET, export_onnx
from greenr.paths import EXPORT_METRICS, MODEL_PATH, ONNX_MODEL_PATH, repo_root, split_manifest

log = logging.getLogger("stages.export")


@exits_cleanly
def main() -> None:
    setup_logging()
    root = repo_root()
    threads = configure_threads(0)
    checkpoint_file = load_model_file(root / MODEL_PATH)
    ckpt = checkpoint_file.checkpoint
    data = export_onnx(ckpt)
    exported = read_model(data, ONNX_MODEL_PATH)
    test_set = load_tensors(read_manifest(root / split_manifest("test")), root, ckpt.preprocessing, ckpt.classes)
    images = test_set.images.numpy()
    reference = build("torch", checkpoint_file, "fp32", threads).predict_logits(images)

    parity = {}
    for name, info in BACKENDS.items():
        if "onnx" not in info.formats or not installed(name):
            continue
        for precision in ("bf16", "fp32") if info.bf16 and native_bf16() else ("fp32",):
            backend = build(name, exported, precision, threads)
            agreement = compare(backend.predict_logits(images), reference, TOLERANCE[precision])
            parity[f"{name}_{precision}"] = agreement.to_dict()
            log.info(
                "%s %s on %d test images: max |logit diff| %.2e, labels %.1f%% the same",
                name,
                precision,
                len(images),
                agreement.max_abs_diff,
                agreement.label_agreement * 100,
            )
    report = {
        "checkpoint_sha256": ckpt.sha256,
        "onnx_sha256": hashlib.sha256(data).hexdigest(),
        "onnx_bytes": len(data),
        "opset": OPSET,
        "test_images": len(images),
        "parity": parity,
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
    write_bytes(root / ONNX_MODEL_PATH, data)
    log.info("wrote %s (%.1f MB, opset %d)", ONNX_MODEL_PATH, len(data) / 1e6, OPSET)


if __name__ == "__main__":
    main()
