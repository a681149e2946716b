"""Input drift: reference statistics of the training images, and a monitor for served requests.

The DVC stage `drift_reference` summarises each training image by a few cheap features
(brightness, saturation, colour balance, size) and stores decile bins of each, plus the class
shares. The server feeds every request to a `DriftMonitor`, which keeps a sliding window of the
most recent requests and reports, per feature, the population stability index (PSI) between the
window and the training images:

    PSI = sum over bins (actual - expected) * ln(actual / expected)

Rule of thumb: below 0.1 no shift, 0.1-0.25 a moderate one, above 0.25 a significant one.
"""

from __future__ import annotations

import json
import math
import threading
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from PIL import Image

from greenr.data.dataset import Example
from greenr.data.images import ImageError, decode_image, resize_and_crop
from greenr.data.parallel import ordered_map
from greenr.errors import GreenrError

FORMAT_VERSION = 1
# Colour features are measured on a small centre crop: cheap per request, and the same for the
# reference and for serving whatever size the image came in.
THUMBNAIL = 64
QUANTILES = tuple(i / 10 for i in range(1, 10))
# Proportions are floored at this before the log: an empty bin must not give an infinite PSI.
EPSILON = 1e-4
LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 weights of R, G, B
COLOUR_FEATURES = ("brightness", "saturation", "red_share", "green_share", "blue_share")
SIZE_FEATURES = ("log10_pixels", "aspect_ratio")
FEATURES = COLOUR_FEATURES + SIZE_FEATURES
CLASS_FEATURE = "class_balance"
DEFAULT_THRESHOLD = 0.25


def colour_features(rgb: np.ndarray) -> dict[str, float]:
    """Brightness, saturation and channel shares of an (H, W, 3) uint8 image, each in [0, 1]."""
    # Per-plane arithmetic: a reduction across the 3 channels of every pixel is ten times slower,
    # and this runs for every request. Brightness is linear, so the mean of the luma is the luma
    # of the channel means.
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    high = np.maximum(np.maximum(red, green), blue).astype(np.float32)
    low = np.minimum(np.minimum(red, green), blue)
    saturation = np.divide(high - low, high, out=np.zeros_like(high), where=high > 0)
    means = np.array([red.mean(), green.mean(), blue.mean()]) / 255.0
    total = float(means.sum()) or 1.0
    return {
        "brightness": float(means @ LUMA),
        "saturation": float(saturation.mean()),
        "red_share": float(means[0]) / total,
        "green_share": float(means[1]) / total,
        "blue_share": float(means[2]) / total,
    }


def size_features(width: int, height: int) -> dict[str, float]:
    return {"log10_pixels": math.log10(max(width * height, 1)), "aspect_ratio": width / max(height, 1)}


def image_features(image: Image.Image | np.ndarray, size: tuple[int, int] | None = None) -> dict[str, float]:
    """Features of one image: a PIL RGB image, or a uint8 array (3, H, W) or (H, W, 3).

    Size features come from `size` (width, height) if given, else from a PIL image's own size;
    an array has usually been resized to the model's input already, so without `size` it
    contributes colour features only.
    """
    if isinstance(image, Image.Image):
        pil = image if image.mode == "RGB" else image.convert("RGB")
        size = size or pil.size
    else:
        array = np.asarray(image)
        planar = array.ndim == 3 and array.shape[0] == 3 and array.shape[2] != 3
        if array.dtype != np.uint8 or array.ndim != 3 or 3 not in (array.shape[0], array.shape[2]):
            raise ValueError(f"expected a uint8 RGB image, got shape {array.shape} dtype {array.dtype}")
        if planar:  # the model input: merging its planes is cheaper than an interleaving copy
            pil = Image.merge("RGB", [Image.fromarray(np.ascontiguousarray(plane)) for plane in array])
        else:
            pil = Image.fromarray(np.ascontiguousarray(array), mode="RGB")
    features = colour_features(np.asarray(resize_and_crop(pil, THUMBNAIL), dtype=np.uint8))
    if size is not None:
        features |= size_features(*size)
    return features


@dataclass(frozen=True)
class FeatureBins:
    """Decile edges of one feature on the training images and the share in each bin."""

    edges: tuple[float, ...]  # interior edges; len(expected) == len(edges) + 1
    expected: tuple[float, ...]

    def shares(self, values: ArrayLike) -> np.ndarray:
        data = np.asarray(values, dtype=np.float64)
        counts = np.bincount(np.searchsorted(np.asarray(self.edges), data, side="right"), minlength=len(self.expected))
        return counts / max(len(data), 1)

    @classmethod
    def fit(cls, values: ArrayLike) -> FeatureBins:
        data = np.asarray(values, dtype=np.float64)
        edges = tuple(float(e) for e in np.unique(np.round(np.quantile(data, QUANTILES), 6)))
        probe = cls(edges, (0.0,) * (len(edges) + 1))
        return cls(edges, tuple(float(round(s, 6)) for s in probe.shares(data)))


def psi(expected: ArrayLike, actual: ArrayLike) -> float:
    """Population stability index between two distributions over the same bins."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), EPSILON)
    a = np.maximum(np.asarray(actual, dtype=np.float64), EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass(frozen=True)
class DriftReference:
    """What `metrics/drift_reference.json` holds."""

    features: dict[str, FeatureBins]
    classes: dict[str, float]  # class -> share of the training images
    images: int
    summary: dict[str, dict[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "images": self.images,
            "thumbnail": THUMBNAIL,
            "classes": self.classes,
            "summary": self.summary,
            "features": {
                name: {"edges": list(b.edges), "expected": list(b.expected)} for name, b in self.features.items()
            },
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> DriftReference:
        if raw.get("format") != FORMAT_VERSION:
            raise GreenrError(
                f"drift reference has format {raw.get('format')}, expected {FORMAT_VERSION}",
                "regenerate it with `dvc repro drift_reference`",
            )
        return cls(
            features={
                name: FeatureBins(tuple(f["edges"]), tuple(f["expected"])) for name, f in raw["features"].items()
            },
            classes=dict(raw["classes"]),
            images=int(raw["images"]),
            summary=dict(raw["summary"]),
        )

    @classmethod
    def parse(cls, text: str, source: str) -> DriftReference:
        """The reference in `text` (read from `source`, named in errors)."""
        try:
            return cls.from_dict(json.loads(text))
        except (ValueError, KeyError, TypeError) as exc:
            raise GreenrError(
                f"drift reference {source} is unreadable: {exc}", "regenerate it with `dvc repro -f drift_reference`"
            ) from None

    @classmethod
    def load(cls, path: str | Path) -> DriftReference:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise GreenrError(
                f"drift reference {path} does not exist", "run `dvc repro drift_reference` (or `dvc pull`)"
            ) from None
        return cls.parse(text, str(path))


def file_features(path: Path) -> dict[str, float] | str:
    """image_features of an image file, or why it cannot be read (run in worker processes)."""
    try:
        return image_features(decode_image(path))
    except FileNotFoundError:
        return "is listed in the split but missing on disk"
    except ImageError as err:
        return err.reason


def build_reference(rows: Sequence[Example], root: Path, workers: int = 0) -> DriftReference:
    """Reference statistics of the images listed in a split manifest."""
    if not rows:
        raise GreenrError("the training split is empty", "run `dvc repro split` on a non-empty data/")

    measured = []
    for row, features in zip(rows, ordered_map(file_features, [root / row.path for row in rows], workers, chunk=64)):
        if isinstance(features, str):
            raise GreenrError(f"{row.path} {features}", "run `dvc pull` or `dvc repro` to restore data and splits")
        measured.append(features)
    bins, summary = {}, {}
    for name in FEATURES:
        values = np.array([m[name] for m in measured])
        bins[name] = FeatureBins.fit(values)
        summary[name] = {
            "mean": round(float(values.mean()), 6),
            "std": round(float(values.std()), 6),
            "min": round(float(values.min()), 6),
            "max": round(float(values.max()), 6),
        }
    labels = sorted({r.label for r in rows})
    classes = {label: round(sum(r.label == label for r in rows) / len(rows), 6) for label in labels}
    return DriftReference(features=bins, classes=classes, images=len(rows), summary=summary)


class DriftMonitor:
    """PSI of recent requests against the training images, per feature. Thread-safe.

    `observe` is cheap (a 64 px thumbnail); PSI is computed when asked (on a Prometheus scrape).
    Until a feature has `min_samples` observations in the window its PSI is NaN: too few requests
    say nothing, and NaN never crosses an alert threshold. With no reference (a model served
    without `metrics/drift_reference.json`) it records nothing and reports no PSI series.
    """

    def __init__(
        self,
        reference: DriftReference | None,
        window: int = 500,
        min_samples: int = 100,
        threshold: float = DEFAULT_THRESHOLD,
    ) -> None:
        if not 1 <= min_samples <= window:
            raise ValueError("need 1 <= min_samples <= window")
        self.reference = reference
        self.window = window
        self.min_samples = min_samples
        self.threshold = threshold
        self._features: deque[dict[str, float]] = deque(maxlen=window)
        self._labels: deque[str] = deque(maxlen=window)
        self._lock = threading.Lock()

    def use_reference(self, reference: DriftReference | None) -> bool:
        """Compare requests with `reference` from now on (None: stop monitoring).

        A different reference (a model trained on other images) empties the window: requests
        seen so far were judged against the old training set. Returns whether it changed.
        """
        with self._lock:
            if reference == self.reference:
                return False
            self.reference = reference
            self._features.clear()
            self._labels.clear()
            return True

    def observe(
        self,
        image: Image.Image | np.ndarray,
        label: str | None = None,
        size: tuple[int, int] | None = None,
    ) -> None:
        """Record one request: its image (PIL RGB or uint8 array), optionally the predicted label
        (for the class balance) and the original (width, height) when `image` was resized."""
        self.record(image_features(image, size=size), label)

    def record(self, features: Mapping[str, float], label: str | None = None) -> None:
        """Record one request's precomputed `image_features` (the server computes them in the
        thread that decodes the upload, then records them with the predicted label)."""
        with self._lock:
            if self.reference is None:
                return
            self._features.append(dict(features))
            if label is not None:
                self._labels.append(label)

    def __len__(self) -> int:
        with self._lock:
            return len(self._features)

    def psi(self) -> dict[str, float]:
        """PSI per feature (and `class_balance`), NaN where the window is still too small."""
        with self._lock:
            reference = self.reference
            observed = list(self._features)
            labels = list(self._labels)
        out: dict[str, float] = {}
        if reference is None:
            return out
        for name, bins in reference.features.items():
            values = [f[name] for f in observed if name in f]
            out[name] = psi(bins.expected, bins.shares(values)) if len(values) >= self.min_samples else math.nan
        classes = sorted(reference.classes)
        if len(labels) >= self.min_samples:
            actual = [sum(label == c for label in labels) / len(labels) for c in classes]
            out[CLASS_FEATURE] = psi([reference.classes[c] for c in classes], actual)
        else:
            out[CLASS_FEATURE] = math.nan
        return out

    def drifted(self) -> list[str]:
        return [name for name, value in self.psi().items() if value > self.threshold]

    def register_gauges(self, registry: Any) -> None:
        """Expose `greenr_drift_psi{feature}`, `greenr_drift_window_images` and
        `greenr_drift_psi_threshold` in a prometheus_client registry, computed at each scrape."""
        registry.register(_DriftCollector(self))


class _DriftCollector:
    def __init__(self, monitor: DriftMonitor) -> None:
        self.monitor = monitor

    def describe(self) -> Iterable[Any]:
        return []  # metrics are produced at collect time; nothing to check at registration

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import GaugeMetricFamily

        psi_family = GaugeMetricFamily(
            "greenr_drift_psi",
            "Population stability index of recent requests vs the training images",
            labels=["feature"],
        )
        for name, value in self.monitor.psi().items():
            psi_family.add_metric([name], value)
        yield psi_family
        yield GaugeMetricFamily("greenr_drift_window_images", "Requests in the drift window", value=len(self.monitor))
        yield GaugeMetricFamily(
            "greenr_drift_psi_threshold", "PSI above which inputs count as drifted", value=self.monitor.threshold
        )
