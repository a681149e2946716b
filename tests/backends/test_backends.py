"""The backends behind one interface: real onnxruntime and OpenVINO against the torch reference."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from greenr.backends.base import TOLERANCE, compare, probabilities, probe_batch
from greenr.backends.export import export_onnx
from greenr.backends.loading import build, load_backend, open_backend
from greenr.backends.model_file import ONNX_METADATA_KEY, load_model_file, model_format, onnx_metadata, read_model
from greenr.data.images import load_model_input
from greenr.errors import GreenrError
from greenr.hardware import native_bf16
from greenr.model import checkpoint
from greenr.model.architectures import ARCHS, build_model, get_arch
from greenr.model.inference import predict_flip_averaged_logits, predict_logits
from greenr.model.spec import ModelSpec
from tests.helpers.images import class_image, jpeg_bytes
from tests.helpers.project import REPO
from tests.helpers.serving import AS_IN_SERVING_IMAGE, CLASSES


def images(size: int, count: int = 6) -> np.ndarray:
    """uint8 (count, 3, size, size): generated photos of both classes, decoded as training does."""
    spec = get_arch("resnet18").preprocessing(size)
    return np.stack(
        [load_model_input(jpeg_bytes(class_image(CLASSES[i % 2], seed=i, size=size + 10)), spec) for i in range(count)]
    )


def torch_logits(pth: Path, batch: np.ndarray) -> np.ndarray:
    ckpt = checkpoint.load(pth)
    return predict_logits(ckpt.build(), torch.from_numpy(batch), ckpt.spec.preprocessing).numpy()


def with_metadata(onnx_path: Path, change) -> bytes:
    """The ONNX file with its greenr metadata passed through `change(dict) -> dict`."""
    proto = onnx.load_model_from_string(onnx_path.read_bytes())
    (entry,) = [p for p in proto.metadata_props if p.key == ONNX_METADATA_KEY]
    entry.value = json.dumps(change(json.loads(entry.value)))
    return proto.SerializeToString()


def test_probe_batch_is_fixed_and_varied() -> None:
    first, second = probe_batch(32), probe_batch(32)
    assert first.dtype == np.uint8 and first.shape == (8, 3, 32, 32)
    assert np.array_equal(first, second)
    assert len({first[i].tobytes() for i in range(8)}) == 8
    assert first.std() > 30  # not flat: a real signal for the model


def test_probabilities_apply_the_temperature() -> None:
    logits = np.array([[2.0, 0.0], [0.0, 0.0]])
    plain = probabilities(logits)
    assert np.allclose(plain.sum(1), 1) and plain[0, 0] == pytest.approx(1 / (1 + np.exp(-2)))
    softer = probabilities(logits, temperature=2.0)
    assert softer[0, 0] == pytest.approx(1 / (1 + np.exp(-1)))
    assert np.allclose(softer[1], [0.5, 0.5])


def test_compare_needs_every_label_and_the_tolerance() -> None:
    reference = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert compare(reference + 1e-4, reference, 1e-3).ok
    assert not compare(reference + 2e-3, reference, 1e-3).ok  # labels agree, logits too far
    swapped = compare(reference[::-1], reference, 10.0)
    assert swapped.label_agreement == 0.0 and not swapped.ok
    assert not compare(reference[:1], reference, 1.0).ok  # a shape mismatch never agrees
    assert not compare(reference * np.nan, reference, 1.0).ok
    # The tolerance scales with the logits: float32 rounding of logits in the thousands.
    large = reference * 5e4
    assert compare(large + 20.0, large, 1e-3).ok and not compare(large + 60.0, large, 1e-3).ok


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_export_of_every_arch_matches_torch_in_every_onnx_backend(arch: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    size = 64
    pth = tmp_path / "stage-1.pth"
    spec = ModelSpec(arch, CLASSES, get_arch(arch).preprocessing(size), temperature=1.5, meta={"a": 1})
    sha = checkpoint.save(pth, build_model(arch, 2), spec)
    model = read_model(export_onnx(checkpoint.load(pth)), "stage-1.onnx")
    assert model.format == "onnx"
    spec = model.spec
    assert (spec.arch, spec.classes, spec.checkpoint_sha256, spec.temperature) == (arch, CLASSES, sha, 1.5)
    assert spec.preprocessing == get_arch(arch).preprocessing(size) and spec.meta == {"a": 1}
    batch = images(size, 7)
    reference = torch_logits(pth, batch)
    for name in ("onnxruntime", "openvino"):
        backend = build(name, model, "fp32", 2)
        for count in (1, 3, 7):  # the batch dimension is dynamic
            agreement = compare(backend.predict_logits(batch[:count]), reference[:count], TOLERANCE["fp32"])
            assert agreement.ok, (name, count, agreement)
        probs = backend.predict_proba(batch)
        assert np.allclose(probs, probabilities(reference, 1.5), atol=1e-4)


def test_auto_picks_an_agreeing_backend_and_shows_every_candidate(exported: tuple[Path, Path]) -> None:
    _, onnx_path = exported
    model, selection = open_backend(onnx_path, threads=2)
    assert selection.backend.name in {"onnxruntime", "openvino"}
    assert selection.backend.precision == "fp32" or native_bf16()
    assert selection.reference == "torch fp32 logits stored at export"
    tried = {(c.backend, c.precision): c for c in selection.candidates}
    assert {("onnxruntime", "fp32"), ("openvino", "fp32")} <= set(tried)
    assert [c.status for c in selection.candidates].count("chosen") == 1
    for candidate in tried.values():
        if candidate.status in ("chosen", "agrees"):
            assert candidate.agreement["agrees"] and candidate.ms_batch1 > 0
    assert "torch" not in tried  # an ONNX file is never run by torch


def test_first_agreeing_serves_one_backend_and_settles_to_the_full_choice(exported: tuple[Path, Path]) -> None:
    """What a server starts with (cold start): one checked backend, the others left for `settle()`."""
    _, onnx_path = exported
    model = load_model_file(onnx_path)
    quick = load_backend(model, "auto", "fp32", threads=2, first_agreeing=True)
    assert not quick.settled and quick.settle is not None
    assert [(c.backend, c.status) for c in quick.candidates] == [("onnxruntime", "chosen")]
    assert quick.candidates[0].agreement["label_agreement"] == 1.0
    assert quick.describe()["settled"] is False
    final = quick.settle()
    assert final.settled and final.settle is None
    assert {(c.backend, c.status in ("chosen", "agrees")) for c in final.candidates} == {
        ("onnxruntime", True),
        ("openvino", True),
    }
    # One candidate only: nothing to time later, so the choice is settled at once.
    assert load_backend(model, "openvino", "fp32", first_agreeing=True).settled


def test_explicit_backend_and_precision(exported: tuple[Path, Path]) -> None:
    pth, onnx_path = exported
    model = load_model_file(onnx_path)
    for name in ("onnxruntime", "openvino"):
        selection = load_backend(model, name, "fp32", threads=1)
        assert (selection.backend.name, selection.backend.precision, selection.backend.threads) == (name, "fp32", 1)
    torch_selection = load_backend(load_model_file(pth), "torch", "fp32")
    assert torch_selection.backend.name == "torch"
    with pytest.raises(GreenrError, match="BACKEND=torch cannot run"):
        load_backend(model, "torch")
    with pytest.raises(GreenrError, match="BACKEND=onnxruntime cannot run"):
        load_backend(load_model_file(pth), "onnxruntime")
    with pytest.raises(GreenrError, match="unknown backend"):
        load_backend(model, "tensorrt")


def test_bf16_falls_back_to_fp32_where_the_cpu_lacks_it(exported: tuple[Path, Path]) -> None:
    _, onnx_path = exported
    model = load_model_file(onnx_path)
    # A CPU without bf16 flags (this project's CI machines): bf16 is never tried.
    selection = load_backend(model, "openvino", "bf16", cpu_flags=frozenset({"avx2"}))
    assert selection.backend.precision == "fp32"
    assert any(c.precision == "bf16" and c.status == "no native bf16" for c in selection.candidates)
    # Flags that claim bf16: OpenVINO is asked for it; where the CPU cannot, it runs fp32 and
    # says so, and that candidate is not counted as bf16.
    claimed = load_backend(model, "openvino", "auto", cpu_flags=frozenset({"amx_bf16"}))
    bf16 = next(c for c in claimed.candidates if c.precision == "bf16")
    if native_bf16():
        assert bf16.status in ("chosen", "agrees", "disagrees")
    else:
        assert bf16.status == "runs as fp32" and claimed.backend.precision == "fp32"


def test_a_backend_that_disagrees_with_the_reference_is_not_used(exported: tuple[Path, Path]) -> None:
    _, onnx_path = exported

    def shift(amount: float):
        def change(raw: dict) -> dict:
            raw["probe"]["logits"] = [[v + amount for v in row] for row in raw["probe"]["logits"]]
            return raw

        return change

    # Beyond the fp32 tolerance with the labels unchanged (a uniform shift keeps the arg-max).
    scale = max(1.0, float(np.abs(load_model_file(onnx_path).spec.reference_logits).max()))
    off = read_model(with_metadata(onnx_path, shift(10 * TOLERANCE["fp32"] * scale)), "off.onnx")
    with pytest.raises(GreenrError, match="no backend agrees with the reference"):
        load_backend(off, "auto", "fp32")
    close = read_model(with_metadata(onnx_path, shift(1e-5)), "close.onnx")
    assert load_backend(close, "auto", "fp32").backend.name in {"onnxruntime", "openvino"}


def test_an_export_without_reference_logits_is_compared_with_onnxruntime(exported: tuple[Path, Path]) -> None:
    _, onnx_path = exported
    bare = read_model(with_metadata(onnx_path, lambda raw: {**raw, "probe": None}), "bare.onnx")
    selection = load_backend(bare, "auto", "fp32")
    assert selection.reference.startswith("onnxruntime fp32 (no reference logits")
    assert all(c.status in ("chosen", "agrees") for c in selection.candidates)


@pytest.mark.parametrize(
    ("hflip", "vflip", "flips"),
    [
        (True, False, [(), (3,)]),
        (False, True, [(), (2,)]),
        (True, True, [(), (3,), (2,), (2, 3)]),
    ],
)
def test_flip_average_and_temperature_from_the_model_file(
    exported: tuple[Path, Path], hflip: bool, vflip: bool, flips: list[tuple[int, ...]]
) -> None:
    _, onnx_path = exported
    plain = load_model_file(onnx_path)
    tta_metadata = {"flip_average": hflip, "vflip_average": vflip, "temperature": 2.0}
    flipped_model = read_model(with_metadata(onnx_path, lambda raw: {**raw, **tta_metadata}), "tta.onnx")
    spec = flipped_model.spec
    assert (spec.flip_average, spec.vflip_average, spec.temperature) == (hflip, vflip, 2.0)
    batch = images(64, 4)
    base = build("onnxruntime", plain, "fp32", 2)
    tta = build("onnxruntime", flipped_model, "fp32", 2)
    # The mean of the logits of the image flipped along each listed set of axes (W = 3, H = 2).
    expected = np.mean([base.predict_logits(np.ascontiguousarray(np.flip(batch, axes))) for axes in flips], axis=0)
    assert np.allclose(tta.predict_logits(batch), expected, atol=1e-5)
    assert np.allclose(tta.predict_proba(batch), probabilities(expected, 2.0), atol=1e-5)
    assert not np.allclose(base.predict_logits(batch), expected, atol=1e-3), "the flips must change something"


def test_training_evaluation_and_every_backend_average_the_same_flips(tmp_path: Path) -> None:
    """A checkpoint asking for all four flips: the torch code that fits its temperature
    (predict_flip_averaged_logits) and every backend, on the checkpoint and on its export, agree."""
    torch.manual_seed(3)
    spec = get_arch("resnet18").preprocessing(64)
    pth = tmp_path / "stage-1.pth"
    checkpoint.save(
        pth, build_model("resnet18", 2), ModelSpec("resnet18", CLASSES, spec, flip_average=True, vflip_average=True)
    )
    ckpt = checkpoint.load(pth)
    assert (ckpt.spec.flip_average, ckpt.spec.vflip_average) == (True, True)
    (tmp_path / "stage-1.onnx").write_bytes(export_onnx(ckpt))
    batch = images(64, 4)
    expected = predict_flip_averaged_logits(ckpt.build(), torch.from_numpy(batch), spec, True, True).numpy()
    assert not np.allclose(expected, torch_logits(pth, batch), atol=1e-3), "the flips must change something"
    for name, path in (
        ("torch", pth),
        ("onnxruntime", tmp_path / "stage-1.onnx"),
        ("openvino", tmp_path / "stage-1.onnx"),
    ):
        model_file = load_model_file(path)
        assert (model_file.spec.flip_average, model_file.spec.vflip_average) == (True, True), name
        assert np.allclose(build(name, model_file, "fp32", 2).predict_logits(batch), expected, atol=1e-4), name


def test_the_torch_backend_runs_a_cpu_batch_in_chunks_with_the_same_logits(exported: tuple[Path, Path]) -> None:
    """Evaluation hands it 64 images at once: activation memory is that of CPU_FORWARD_IMAGES."""
    from greenr.model.inference import CPU_FORWARD_IMAGES

    pth, _ = exported
    backend = build("torch", load_model_file(pth), "fp32", 2)
    seen: list[int] = []
    backend._model.register_forward_pre_hook(lambda _module, args: seen.append(len(args[0])))
    batch = np.concatenate([images(64, 6)] * 12)[:70]
    logits = backend.predict_logits(batch, batch_size=70)
    assert seen == [CPU_FORWARD_IMAGES, CPU_FORWARD_IMAGES, 70 - 2 * CPU_FORWARD_IMAGES]
    one_at_a_time = np.concatenate([torch_logits(pth, batch[i : i + 1]) for i in range(0, 70, 7)])
    assert np.allclose(logits[::7], one_at_a_time, atol=1e-5)


def test_metadata_is_read_without_parsing_the_graph(exported: tuple[Path, Path]) -> None:
    data = exported[1].read_bytes()
    parsed = onnx.load_model_from_string(data)
    assert onnx_metadata(data, "m.onnx") == {p.key: p.value for p in parsed.metadata_props}
    assert ONNX_METADATA_KEY in onnx_metadata(data, "m.onnx")


def test_bad_model_files_are_clear_errors(tmp_path: Path, exported: tuple[Path, Path]) -> None:
    for garbage in (b"\x08\x07 not onnx at all", b"this is not a model", exported[1].read_bytes()[:5000], b""):
        with pytest.raises(GreenrError, match="not a readable ONNX model"):
            read_model(garbage, "x.onnx")
    proto = onnx.load_model_from_string(exported[1].read_bytes())
    del proto.metadata_props[:]
    with pytest.raises(GreenrError, match="lacks the `greenr` metadata"):
        read_model(proto.SerializeToString(), "foreign.onnx")
    with pytest.raises(GreenrError, match="does not exist"):
        load_model_file(tmp_path / "absent.onnx")
    with pytest.raises(GreenrError, match="not a readable checkpoint"):
        read_model(b"PK\x03\x04 garbage", "stage-1.pth")


def test_the_format_comes_from_the_bytes_not_from_a_decorated_name(exported: tuple[Path, Path]) -> None:
    pth, onnx_path = exported
    onnx_bytes, pth_bytes = onnx_path.read_bytes(), pth.read_bytes()
    assert model_format("models/stage-1.onnx@HEAD~1", onnx_bytes) == "onnx"
    assert model_format("models/stage-1.pth@v1", pth_bytes) == "torch"
    assert model_format("weights.bin", pth_bytes) == "torch" and model_format("m.onnx", b"") == "onnx"
    assert read_model(onnx_bytes, "models/stage-1.onnx at revision 'v1'").format == "onnx"


def test_model_spec_round_trips() -> None:
    spec = ModelSpec(
        "resnet18",
        CLASSES,
        get_arch("resnet18").preprocessing(64),
        temperature=1.3,
        flip_average=True,
        vflip_average=True,
        checkpoint_sha256="ab",
        meta={"k": [1]},
        reference_logits=np.ones((8, 2), dtype=np.float32),
    )
    again = ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert np.array_equal(again.reference_logits, spec.reference_logits)
    assert dataclasses.replace(again, reference_logits=None) == dataclasses.replace(spec, reference_logits=None)


def test_the_onnx_path_runs_where_torch_cannot_be_imported(exported: tuple[Path, Path]) -> None:
    """As in the serving image (no torch, no onnx): reading the export, choosing and running a backend."""
    _, onnx_path = exported
    code = f"""{AS_IN_SERVING_IMAGE}
import numpy as np
from greenr.backends.loading import open_backend
from greenr.backends.base import probe_batch
model, selection = open_backend({str(onnx_path)!r})
print(selection.backend.name, selection.backend.predict_proba(probe_batch(64, 2)).shape)
assert not any(name == "torch" or name.startswith("torch.") for name in sys.modules if sys.modules[name])
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] in {"onnxruntime", "openvino"} and "(2, 2)" in done.stdout
    blocked = subprocess.run(
        [
            sys.executable,
            "-c",
            f"{AS_IN_SERVING_IMAGE}\nfrom greenr.backends.model_file import load_model_file\n"
            f"load_model_file({str(exported[0])!r})",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert blocked.returncode != 0 and "torch is not installed here" in blocked.stderr
