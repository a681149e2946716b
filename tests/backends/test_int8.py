"""The INT8 export (greenr.backends.quantize) on the real backends, and how the loader offers it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from greenr.backends.base import FLIP_MARGIN, TOLERANCE, compare, probe_batch
from greenr.backends.loading import build, load_backend, open_backend
from greenr.backends.model_file import (
    int8_companion,
    int8_path,
    load_model_file,
    read_int8_companion,
    read_model,
)
from greenr.backends.quantize import quantize_int8, spread, with_quantization
from greenr.paths import INT8_MODEL_PATH, ONNX_MODEL_PATH
from tests.backends.test_backends import images
from tests.helpers.serving import write_checkpoint, write_onnx

BOTH = ["onnxruntime", "openvino"]


def quantized(onnx_path: Path, backends: list[str]) -> bytes:
    """The INT8 export of `onnx_path`, calibrated on 32 generated photos, certified for `backends`."""
    model = load_model_file(onnx_path)
    batches = (images(model.spec.image_size, 16) for _ in range(2))
    data = quantize_int8(model.data, batches, 32)
    return with_quantization(data, "stage-1.int8.onnx", {"scheme": "int8", "backends": backends})


@pytest.fixture(scope="module")
def int8_file(exported: tuple[Path, Path]) -> bytes:
    return quantized(exported[1], BOTH)


def test_compare_lets_int8_move_only_labels_near_a_tie() -> None:
    reference = np.array([[1.0, 0.9], [3.0, -3.0]])  # margins 0.1 and 6 (scale 3)
    near_tie_flipped = np.array([[0.9, 1.0], [3.0, -3.0]])
    assert compare(near_tie_flipped, reference, 0.5, FLIP_MARGIN["int8"]).ok
    assert not compare(near_tie_flipped, reference, 0.5).ok  # fp32 and bf16: every label counts
    confident_flipped = np.array([[1.0, 0.9], [-0.1, 0.1]])
    assert not compare(confident_flipped, reference, 10.0, FLIP_MARGIN["int8"]).ok


def test_calibration_images_are_spread_over_the_split() -> None:
    labels = np.repeat([0, 1], 10)  # a split sorted by path: the class folders one after the other
    picked = spread(len(labels), 4)
    assert picked.tolist() == [0, 5, 10, 15] and labels[picked].tolist() == [0, 0, 1, 1]
    assert spread(3, 4).tolist() == [0, 1, 2]


def test_the_int8_export_runs_on_both_backends_near_the_reference(exported: tuple[Path, Path], int8_file) -> None:
    fp32 = load_model_file(exported[1])
    model = read_model(int8_file, "stage-1.int8.onnx")
    assert model.spec.quantization == {"scheme": "int8", "backends": BOTH}
    assert model.spec.checkpoint_sha256 == fp32.spec.checkpoint_sha256 and model.spec.classes == fp32.spec.classes
    ops = {node.op_type for node in onnx.load_model_from_string(int8_file).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert len(int8_file) < len(fp32.data) / 2  # 8-bit weights
    probe = probe_batch(fp32.spec.image_size)
    for name in BOTH:
        agreement = compare(build(name, model, "int8", 2).predict_logits(probe), fp32.spec.reference_logits, 1.0)
        assert agreement.max_abs_diff <= TOLERANCE["int8"], (name, agreement)
    with pytest.raises(ValueError, match="not an INT8 export"):
        build("onnxruntime", fp32, "int8", 2)
    with pytest.raises(ValueError, match="it is an INT8 export"):
        build("openvino", model, "fp32", 2)


def test_auto_and_int8_take_the_int8_export_where_it_is_certified(
    exported: tuple[Path, Path], int8_file, tmp_path: Path
) -> None:
    fp32 = load_model_file(exported[1])
    only_openvino = read_model(quantized(exported[1], ["openvino"]), "stage-1.int8.onnx")
    selection = load_backend(fp32, "auto", "auto", threads=2, int8=only_openvino)
    status = {(c.backend, c.precision): c.status for c in selection.candidates}
    assert status[("onnxruntime", "int8")] == "not certified at export"
    assert status[("openvino", "int8")] in ("chosen", "agrees")
    forced = load_backend(fp32, "auto", "int8", threads=2, int8=only_openvino)
    assert (forced.backend.name, forced.backend.precision) == ("openvino", "int8")
    assert forced.describe()["name"] == "openvino" and forced.describe()["precision"] == "int8"
    assert not any(c.precision == "int8" for c in load_backend(fp32, "auto", "fp32", int8=only_openvino).candidates)
    # On disk, beside the export: open_backend finds it (greenr predict, benchmarks).
    (tmp_path / "stage-1.onnx").write_bytes(fp32.data)
    int8_path(tmp_path / "stage-1.onnx").write_bytes(int8_file)
    _, selection = open_backend(tmp_path / "stage-1.onnx", "onnxruntime", "int8", threads=2)
    assert (selection.backend.name, selection.backend.precision) == ("onnxruntime", "int8")


def test_a_cold_start_tries_int8_first_only_where_the_cpu_has_int8_dot_products(
    exported: tuple[Path, Path], int8_file
) -> None:
    fp32 = load_model_file(exported[1])
    model = read_model(int8_file, "stage-1.int8.onnx")
    vnni = load_backend(fp32, "openvino", "auto", cpu_flags={"avx512_vnni"}, first_agreeing=True, int8=model)
    assert vnni.backend.precision == "int8" and not vnni.settled
    avx2 = load_backend(fp32, "openvino", "auto", cpu_flags={"avx2"}, first_agreeing=True, int8=model)
    assert avx2.backend.precision == "fp32" and not avx2.settled


def test_a_broken_int8_export_disagrees_and_fp32_serves(exported: tuple[Path, Path], int8_file) -> None:
    """Weights scaled 3x (what wrong quantization scales do): far outside the INT8 bound."""
    proto = onnx.load_model_from_string(int8_file)
    stored = {init.name: init for init in proto.graph.initializer}
    weight_scales = {
        node.input[1] for node in proto.graph.node if node.op_type == "DequantizeLinear" and node.input[0] in stored
    }
    assert weight_scales
    for name in weight_scales:
        stored[name].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(stored[name]) * 3, name))
    broken = read_model(proto.SerializeToString(), "broken.int8.onnx")
    selection = load_backend(load_model_file(exported[1]), "auto", "int8", threads=2, int8=broken)
    assert selection.backend.precision == "fp32"
    assert {c.status for c in selection.candidates if c.precision == "int8"} == {"disagrees"}


def test_a_missing_empty_or_stale_int8_file_is_not_offered(
    exported: tuple[Path, Path], int8_file, tmp_path: Path
) -> None:
    fp32 = load_model_file(exported[1])
    assert int8_companion(fp32, int8_file, "m.int8.onnx")[0] is not None
    assert "absent" in int8_companion(fp32, None, "m.int8.onnx")[1]
    assert "switched off" in int8_companion(fp32, b"", "m.int8.onnx")[1]
    assert "not quantized" in int8_companion(fp32, fp32.data, "m.int8.onnx")[1]
    assert "not a readable" in int8_companion(fp32, b"garbage", "m.int8.onnx")[1]
    other = tmp_path / "other"
    other.mkdir()
    write_checkpoint(other / "stage-1.pth", seed=9)
    write_onnx(other / "stage-1.pth", other / "stage-1.onnx")
    stale = quantized(other / "stage-1.onnx", BOTH)
    assert "another checkpoint" in int8_companion(fp32, stale, "m.int8.onnx")[1]
    assert read_int8_companion(fp32, tmp_path / "nothing.onnx", "nothing.onnx")[0] is None
    assert int8_path(ONNX_MODEL_PATH).as_posix() == INT8_MODEL_PATH  # where the stage writes it
    selection = load_backend(fp32, "auto", "int8", threads=2, int8=None, int8_note="no INT8 export (x is absent)")
    assert selection.backend.precision == "fp32"
    assert {c.status for c in selection.candidates if c.precision == "int8"} == {"no INT8 export (x is absent)"}
    assert hashlib.sha256(int8_file).hexdigest() != hashlib.sha256(stale).hexdigest()
