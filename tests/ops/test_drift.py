"""greenr/ops/drift.py and the drift_reference stage: shifted inputs cross the PSI threshold, others do not."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from greenr.data.dataset import write_manifest
from greenr.data.images import Preprocessing, to_uint8_array
from greenr.errors import GreenrError
from greenr.ops.drift import (
    CLASS_FEATURE,
    COLOUR_FEATURES,
    FEATURES,
    DriftMonitor,
    DriftReference,
    FeatureBins,
    build_reference,
    colour_features,
    image_features,
    psi,
)
from stages import drift_reference
from tests.helpers.images import meadows, write_training_set

TRAIN_IMAGES = 300
WINDOW = 300


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> DriftReference:
    root = tmp_path_factory.mktemp("train")
    return build_reference(write_training_set(root, seed=1, count=TRAIN_IMAGES), root)


def monitor_after(reference: DriftReference, seed: int, **shift: float) -> tuple[DriftMonitor, CollectorRegistry]:
    monitor = DriftMonitor(reference, window=WINDOW, min_samples=100)
    registry = CollectorRegistry()
    monitor.register_gauges(registry)
    for label, image in meadows(seed, WINDOW, **shift):
        monitor.observe(image, label=label)
    return monitor, registry


def gauge(registry: CollectorRegistry, feature: str) -> float:
    value = registry.get_sample_value("greenr_drift_psi", {"feature": feature})
    assert value is not None, f"no greenr_drift_psi gauge for {feature}"
    return value


def test_unshifted_requests_stay_under_the_threshold(reference) -> None:
    monitor, registry = monitor_after(reference, seed=2)
    values = {name: gauge(registry, name) for name in (*FEATURES, CLASS_FEATURE)}
    assert all(v < monitor.threshold for v in values.values()), values
    assert monitor.drifted() == []
    assert registry.get_sample_value("greenr_drift_window_images") == WINDOW
    assert registry.get_sample_value("greenr_drift_psi_threshold") == 0.25


def test_darker_images_cross_the_brightness_threshold(reference) -> None:
    monitor, registry = monitor_after(reference, seed=3, darken=0.35)
    assert gauge(registry, "brightness") > monitor.threshold
    assert gauge(registry, "aspect_ratio") < monitor.threshold  # sizes did not change
    assert "brightness" in monitor.drifted()


def test_bluer_images_cross_the_colour_balance_threshold(reference) -> None:
    monitor, registry = monitor_after(reference, seed=4, blue_shift=90)
    assert gauge(registry, "blue_share") > monitor.threshold
    assert gauge(registry, "green_share") > monitor.threshold


def test_class_balance_drift(reference) -> None:
    monitor = DriftMonitor(reference, window=200, min_samples=100)
    for _, image in meadows(5, 200):
        monitor.observe(image, label="grass")
    assert monitor.psi()[CLASS_FEATURE] > monitor.threshold


def test_window_slides_back_to_normal(reference) -> None:
    monitor = DriftMonitor(reference, window=200, min_samples=100)
    for label, image in meadows(6, 200, darken=0.35):
        monitor.observe(image, label=label)
    assert monitor.psi()["brightness"] > monitor.threshold
    for label, image in meadows(7, 200):
        monitor.observe(image, label=label)
    assert monitor.psi()["brightness"] < monitor.threshold


def test_too_few_requests_give_nan_not_an_alert(reference) -> None:
    monitor = DriftMonitor(reference, window=200, min_samples=100)
    registry = CollectorRegistry()
    monitor.register_gauges(registry)
    for label, image in meadows(8, 20, darken=0.2):
        monitor.observe(image, label=label)
    assert math.isnan(gauge(registry, "brightness"))
    assert monitor.drifted() == []
    assert b'greenr_drift_psi{feature="brightness"} NaN' in generate_latest(registry)


def test_array_input_matches_pil_colour_features() -> None:
    """The server passes the model-input uint8 array instead of the PIL image."""
    ((_, image),) = meadows(9, 1)
    from_pil = image_features(image)
    tensor = to_uint8_array(image, Preprocessing(image_size=64))
    from_tensor = image_features(tensor, size=image.size)
    for name in FEATURES:
        assert from_tensor[name] == pytest.approx(from_pil[name], abs=0.02), name
    assert "log10_pixels" not in image_features(tensor)
    with pytest.raises(ValueError):
        image_features(np.zeros((3, 8, 8), dtype=np.float32))


def test_colour_features_follow_their_per_pixel_definition() -> None:
    rng = np.random.default_rng(3)
    for rgb in (rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), np.zeros((4, 4, 3), dtype=np.uint8)):
        pixels = rgb.reshape(-1, 3).astype(np.float64) / 255
        high, low = pixels.max(axis=1), pixels.min(axis=1)
        means = pixels.mean(axis=0)
        expected = {
            "brightness": (pixels @ [0.299, 0.587, 0.114]).mean(),
            "saturation": np.where(high > 0, (high - low) / np.maximum(high, 1e-12), 0).mean(),
            **{f"{c}_share": means[i] / (means.sum() or 1) for i, c in enumerate(("red", "green", "blue"))},
        }
        got = colour_features(rgb)
        for name in COLOUR_FEATURES:
            assert got[name] == pytest.approx(expected[name], abs=1e-6), name
    # The model input (3, S, S) and the same pixels interleaved (S, S, 3) are one image.
    planar = rng.integers(0, 256, (3, 40, 40), dtype=np.uint8)
    assert image_features(planar) == image_features(planar.transpose(1, 2, 0).copy())


def test_psi_basics() -> None:
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0
    assert psi([0.5, 0.5], [0.9, 0.1]) == pytest.approx(0.4 * math.log(0.9 / 0.5) - 0.4 * math.log(0.1 / 0.5))
    assert math.isfinite(psi([0.5, 0.5], [1.0, 0.0]))
    bins = FeatureBins.fit([1.0] * 50 + [2.0] * 50)  # ties collapse the deciles
    assert len(bins.expected) == len(bins.edges) + 1
    assert sum(bins.expected) == pytest.approx(1.0)
    assert bins.shares([1.0, 2.0, 3.0]).sum() == pytest.approx(1.0)


def test_reference_round_trip(reference, tmp_path) -> None:
    path = tmp_path / "ref.json"
    path.write_text(json.dumps(reference.to_dict()))
    loaded = DriftReference.load(path)
    assert loaded == reference
    assert set(loaded.features) == set(FEATURES)
    assert loaded.classes == {"dandelion": 0.5, "grass": 0.5}
    with pytest.raises(GreenrError, match="drift_reference"):
        DriftReference.load(tmp_path / "missing.json")
    path.write_text(json.dumps(reference.to_dict() | {"format": 99}))
    with pytest.raises(GreenrError, match="format"):
        DriftReference.load(path)


def test_stage_writes_a_deterministic_reference(tmp_path, monkeypatch) -> None:
    rows = write_training_set(tmp_path, seed=10, count=40)
    write_manifest(tmp_path / "splits" / "train.csv", rows)
    monkeypatch.setenv("GREENR_ROOT", str(tmp_path))
    outputs = []
    for _ in range(2):
        drift_reference.main()
        outputs.append((tmp_path / "metrics" / "drift_reference.json").read_bytes())
    assert outputs[0] == outputs[1]
    assert json.loads(outputs[0])["images"] == 40


def test_stage_fails_cleanly_without_a_split(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("GREENR_ROOT", str(tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        drift_reference.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "dvc repro split" in err and "Traceback" not in err
    assert not (tmp_path / "metrics").exists(), "no half-written output"


def test_a_new_reference_empties_the_window_and_none_stops_recording(reference, tmp_path) -> None:
    monitor = DriftMonitor(reference, window=200, min_samples=100)
    for label, image in meadows(10, 120, darken=0.35):
        monitor.observe(image, label=label)
    same = DriftReference.from_dict(json.loads(json.dumps(reference.to_dict())))
    assert monitor.use_reference(same) is False  # the same training images: keep the window
    assert len(monitor) == 120
    root = tmp_path / "other"
    other = build_reference(write_training_set(root, seed=11, count=60), root)
    assert monitor.use_reference(other) is True
    assert len(monitor) == 0
    assert monitor.use_reference(None) is True
    monitor.observe(next(meadows(12, 1))[1], label="grass")
    assert len(monitor) == 0
    assert monitor.psi() == {}
