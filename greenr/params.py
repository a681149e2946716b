"""`params.yaml`: typed sections, validated before any heavy work.

Each stage reads only its own section(s). Unknown or misspelt keys are errors, with a
suggestion, because a silently ignored `lerning_rate` is the worst kind of experiment bug.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from greenr.errors import GreenrError
from greenr.paths import PARAMS_FILE, repo_root


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(Section):
    # The class names in the order of the model's outputs. Unset: the sorted sub-folders of data/
    # that hold images (torchvision's ImageFolder rule). Set: it must name exactly those folders.
    classes: list[str] | None = None

    @model_validator(mode="after")
    def _distinct_names(self) -> DataParams:
        if self.classes is not None:
            if len(self.classes) < 2:
                raise ValueError("list 2 or more classes (or leave classes unset)")
            if len(set(self.classes)) != len(self.classes):
                raise ValueError(f"class names repeat: {self.classes}")
            bad = [c for c in self.classes if not c or c.startswith(".") or "/" in c or "\\" in c]
            if bad:
                raise ValueError(f"{bad} cannot be folder names of data/")
        return self


class SplitParams(Section):
    seed: int = 42
    train: float = Field(0.70, gt=0, lt=1)
    val: float = Field(0.15, gt=0, lt=1)
    test: float = Field(0.15, gt=0, lt=1)
    # Two images whose 64-bit perceptual hashes differ in at most this many bits are one photo
    # (resized or re-encoded) and share a split (why 8: docs/scale.md).
    near_duplicate_distance: int = Field(8, ge=0, le=32)

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> SplitParams:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must sum to 1, got {total:g}")
        return self


class PrepareParams(Section):
    # JPEG quality of the prepared images (the model's input square): 95 keeps them within a few
    # grey levels of what the server computes from the original, at a fifth of the raw size.
    quality: int = Field(95, ge=50, le=100)
    # Images per tar shard: DVC tracks one file per shard instead of one per image.
    shard_images: int = Field(1000, ge=1, le=1_000_000)


class ModelParams(Section):
    arch: Literal["resnet18", "efficientnet_lite0"] = "efficientnet_lite0"
    # auto: the arch's default (greenr/model/architectures.py ARCHS): resnet18 from scratch (its ImageNet
    # weights need a download), efficientnet_lite0 with the ImageNet weights it ships with.
    pretrained: bool | Literal["auto"] = "auto"
    image_size: int = Field(224, ge=32, le=1024)
    # Test-time flip averaging: the mean of the logits of the image and its mirror (flip_average)
    # and of its vertical flips (vflip_average; with both, the four flips). Stored in the
    # checkpoint, so evaluation and serving (every backend) do the same.
    flip_average: bool = False
    vflip_average: bool = False


class AugmentParams(Section):
    hflip: bool = True
    vflip: bool = False
    # Random-resized-crop lower bound on the kept area; 1.0 turns cropping off.
    crop_scale_min: float = Field(0.6, gt=0, le=1)
    # Strength of random brightness/contrast/saturation jitter; 0 turns it off.
    color_jitter: float = Field(0.2, ge=0, le=1)
    # Batch mixing while the backbone trains (finetune full/discriminative; frozen-feature heads
    # ignore it): the Beta(alpha, alpha) concentration of mixup (blend two images and their
    # labels) and of CutMix (paste a box of one image into another, labels by area); 0 = off.
    # With both on, each batch uses one of them at random.
    mixup: float = Field(0.0, ge=0, le=10)
    cutmix: float = Field(0.0, ge=0, le=10)


class TrainParams(Section):
    epochs: int = Field(30, ge=1, le=10_000)
    batch_size: int = Field(32, ge=1, le=4096)
    lr: float = Field(3e-3, gt=0, le=10)
    optimizer: Literal["adam", "adamw", "sgd"] = "adamw"
    weight_decay: float = Field(0.01, ge=0)
    # full: train everything; frozen: train only the head (BatchNorm of the backbone kept
    # in eval mode); discriminative: train everything, backbone at lr * backbone_lr_scale;
    # top: the last block(s), head convolution and classifier train on cached activations of the
    # frozen blocks below (efficientnet_lite0); auto: efficientnet_lite0 trains each of frozen,
    # top, discriminative and full that fits `budget` and keeps the cheapest within one standard
    # error of the lowest validation log loss (greenr.model.recipe.choose); other archs: full.
    finetune: Literal["auto", "full", "frozen", "top", "discriminative"] = "auto"
    # finetune auto: the candidates together may cost this many times the frozen recipe's training
    # compute (FLOPs per image, the same on every machine). At 30 epochs and 8 feature views top
    # costs 1.2 and discriminative and full 9 each: 3 admits frozen and top, 12 discriminative
    # too, 21 all four (what a GPU affords).
    budget: float = Field(3.0, ge=1, le=1000)
    backbone_lr_scale: float = Field(0.1, gt=0, le=1)
    # Learning-rate schedule, stepped per batch: constant; cosine (to 0 over all epochs);
    # onecycle (warm-up to lr over the first quarter, then anneal).
    schedule: Literal["constant", "cosine", "onecycle"] = "cosine"
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    # Which epoch's weights to keep: the best on validation (accuracy, then loss), or the last
    # (for schedules that anneal to zero, where the last epoch is the intended one).
    select: Literal["best", "last"] = "last"
    # finetune frozen and top: backbone outputs are computed once per view of each training image,
    # the centre and mirror views plus this many randomly augmented ones, and the head trains on them.
    feature_views: int = Field(8, ge=0, le=64)
    # Images per backbone pass when features are extracted (a multiple of 64; 0: 256 on a GPU, 64
    # on a CPU, where larger batches only cost memory). The features do not depend on it.
    feature_batch_size: int = Field(0, ge=0, le=4096, multiple_of=64)
    # Fit a temperature on the validation logits (stored in the checkpoint) so that the
    # probabilities are calibrated.
    calibrate: bool = True
    # bf16 autocast (+ channels_last) where the hardware computes bf16 natively (CPUs with AMX or
    # AVX512-BF16, CUDA GPUs); auto = there, fp32 elsewhere.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # Decode the prepared JPEGs on the GPU (nvJPEG) when training on CUDA; CPU worker processes
    # otherwise. nvJPEG's pixels differ from libjpeg's by a grey level here and there.
    gpu_decode: bool = False
    augment: AugmentParams = AugmentParams()
    seed: int = 42
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    # 0 = one thread per core the process may use.
    num_threads: int = Field(0, ge=0, le=256)


class EvaluateParams(Section):
    batch_size: int = Field(64, ge=1, le=4096)
    # The class whose ROC and PR curves are drawn for a 2-class model (None: the first class);
    # with more classes every class gets its one-vs-rest curves and this is not used.
    positive_class: str | None = None
    bootstrap_samples: int = Field(1000, ge=0, le=100_000)
    confidence: float = Field(0.95, gt=0, lt=1)
    seed: int = 0


class ExportParams(Section):
    """Stage `export`: the INT8 model beside the fp32 export (greenr.backends.quantize)."""

    # Quantize to INT8 and offer it to the backends that keep the answers on the test split.
    # auto: a model that passes on no backend is still written, offered nowhere, and the stage
    # succeeds (serving stays fp32/bf16; a model trained on another CPU may pass where this one did
    # not); true: the stage fails when no backend passes; false: no quantization (the INT8 output is
    # written empty and never served).
    int8: bool | Literal["auto"] = "auto"
    # Training images that calibrate the activation ranges (evenly spaced over splits/train.csv).
    calibration_images: int = Field(300, ge=1, le=100_000)
    # The INT8 model may change at most this share of test labels (against the fp32 reference), and its
    # test accuracy must stay inside the reference's bootstrap interval (evaluate.*), on a backend
    # for it to be offered there.
    max_label_changes: float = Field(0.01, ge=0, le=1)


class PromoteParams(Section):
    """The promotion gate (`python -m greenr.evaluation.promote`): absolute floors and allowed regressions."""

    min_accuracy: float = Field(0.85, ge=0, le=1)
    min_macro_f1: float = Field(0.85, ge=0, le=1)
    # How much worse than the base revision a candidate may be (absolute, on test metrics).
    max_accuracy_drop: float = Field(0.02, ge=0, le=1)
    max_macro_f1_drop: float = Field(0.02, ge=0, le=1)
    # Name and alias in the MLflow Model Registry for a promoted model (`--register`).
    registered_model: str = "greenr"
    alias: str = "champion"


SECTIONS: dict[str, type[Section]] = {
    "data": DataParams,
    "split": SplitParams,
    "prepare": PrepareParams,
    "model": ModelParams,
    "train": TrainParams,
    "evaluate": EvaluateParams,
    "export": ExportParams,
    "promote": PromoteParams,
}


def _known_keys(model: type[BaseModel], loc: tuple[str | int, ...]) -> list[str]:
    """Field names of the (nested) model at `loc`, for spelling suggestions."""
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def describe_error(section: str, model: type[Section], err: ValidationError) -> str:
    lines = []
    for item in err.errors():
        loc = tuple(item["loc"])
        dotted = ".".join(str(p) for p in (section, *loc))
        if item["type"] == "extra_forbidden":
            known = _known_keys(model, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(known)})"
            lines.append(f"{dotted}: unknown key{hint}")
        else:
            got = f" (got {item['input']!r})" if "input" in item and not isinstance(item["input"], dict) else ""
            lines.append(f"{dotted}: {item['msg']}{got}")
    return "; ".join(lines)


def read_params_file(path: Path | None = None) -> dict[str, Any]:
    path = path or repo_root() / PARAMS_FILE
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GreenrError(f"{path} is missing", "restore it with `git checkout params.yaml`") from None
    except yaml.YAMLError as exc:
        raise GreenrError(f"{path} is not valid YAML: {exc}", "fix the syntax error it points at") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise GreenrError(f"{path} must be a mapping of sections", "see the README for its layout")
    return raw


def load_section(name: str, path: Path | None = None) -> Any:
    """Validate one section of params.yaml and return it as a typed, frozen object."""
    model = SECTIONS[name]
    raw = read_params_file(path).get(name) or {}
    if not isinstance(raw, dict):
        raise GreenrError(f"params.yaml: '{name}' must be a mapping", f"see the defaults in {PARAMS_FILE}")
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise GreenrError(
            f"params.yaml: {describe_error(name, model, err)}",
            "correct the value in params.yaml (or the -S override you passed)",
        ) from None


def validate_all(path: Path | None = None) -> dict[str, Section]:
    """Check every section and reject unknown top-level sections."""
    raw = read_params_file(path)
    unknown = [key for key in raw if key not in SECTIONS]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, list(SECTIONS), n=1)
            hints.append(f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        raise GreenrError(f"params.yaml: unknown section {', '.join(hints)}", f"known sections: {', '.join(SECTIONS)}")
    return {name: load_section(name, path) for name in SECTIONS}
