"""The whole training recipe, from resolved params to a calibrated model: what the train stage
runs once and `greenr cv` runs per fold, so both measure the same thing."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from greenr.data.images import Preprocessing, flip_view_names
from greenr.data.loader import Samples
from greenr.model import frozen
from greenr.model.architectures import build_model, get_arch, resolve_finetune, resolve_pretrained
from greenr.model.calibration import fit_temperature
from greenr.model.device import use_bf16
from greenr.model.training import EpochStats, FitResult, fit, predict_samples, shared_temp_dir
from greenr.params import ModelParams, TrainParams

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """Params with every `auto` resolved for the arch: what actually trains (and is recorded)."""

    model: ModelParams
    train: TrainParams
    pretrained: bool

    @property
    def arch(self) -> str:
        return self.model.arch

    @property
    def spec(self) -> Preprocessing:
        return get_arch(self.arch).preprocessing(self.model.image_size)


def resolve(model_params: ModelParams, train_params: TrainParams) -> Recipe:
    """Resolve `pretrained: auto` and `finetune: auto` for the arch, once."""
    pretrained = resolve_pretrained(model_params.arch, model_params.pretrained)
    finetune = resolve_finetune(model_params.arch, pretrained, train_params.finetune)
    return Recipe(model_params, train_params.model_copy(update={"finetune": finetune}), pretrained)


@dataclass
class FrozenFeatures:
    """Backbone features of a training set (its V views) and a validation set (its test-time flip views)."""

    train: frozen.FeatureBank
    val: frozen.FeatureBank


@dataclass
class Trained:
    model: nn.Module
    fitted: FitResult
    temperature: float


def feature_batch_size(params: TrainParams, device: torch.device) -> int:
    return params.feature_batch_size or (256 if device.type == "cuda" else 64)


def frozen_features(
    model: nn.Module, recipe: Recipe, train: Samples, val: Samples, device: torch.device, folder: Path
) -> FrozenFeatures:
    """The features the head trains on, in `folder` (train.npy, val.npy)."""
    params = recipe.train
    bf16 = use_bf16(params.precision, device)
    size = feature_batch_size(params, device)

    def embed(samples: Samples, views: list[str], name: str) -> frozen.FeatureBank:
        return frozen.extract(
            model,
            recipe.arch,
            samples,
            recipe.spec,
            views,
            params.augment,
            params.seed,
            device,
            folder / name,
            size,
            bf16,
            params.gpu_decode,
            params.finetune,
        )

    return FrozenFeatures(
        train=embed(train, frozen.training_views(params.feature_views), "train.npy"),
        val=embed(val, flip_view_names(recipe.model.flip_average, recipe.model.vflip_average), "val.npy"),
    )


def train_classifier(
    recipe: Recipe,
    num_classes: int,
    train_set: Samples,
    val_set: Samples,
    device: torch.device,
    on_epoch: Callable[[EpochStats], None] | None = None,
    features: FrozenFeatures | None = None,
) -> Trained:
    """Build, train and calibrate a model as `recipe` says.

    Frozen backbones train their head on cached features (pass `features` to reuse ones already
    computed, as cross-validation does for all folds at once; else they are extracted into a
    temporary folder on the project's disk); every other setting runs `fit`. The temperature is
    fitted on the validation logits when `train.calibrate`. Under torchrun every rank calls this;
    rank 0's result is the one to keep.
    """
    params = recipe.train
    torch.manual_seed(params.seed)  # the head's initial weights: the same in every run and fold
    model = build_model(recipe.arch, num_classes, pretrained=recipe.pretrained)
    val_labels = val_set.label_tensor
    if params.finetune in frozen.CACHED:
        with contextlib.ExitStack() as stack:
            if features is None:
                folder = Path(stack.enter_context(shared_temp_dir("features")))
                features = frozen_features(model, recipe, train_set, val_set, device, folder)
            part = frozen.trainable_part(model, recipe.arch, params.finetune, recipe.model.image_size)
            fitted = frozen.fit_head(
                model, part, features.train, train_set.label_tensor, features.val, val_labels, params, on_epoch
            )
            with torch.no_grad():
                val_logits = frozen.head_logits(part, features.val)
            features = None  # the memory maps close before their folder goes
    else:
        fitted = fit(model, recipe.arch, train_set, val_set, recipe.spec, params, device, on_epoch)
        val_logits = predict_samples(
            model,
            val_set,
            recipe.spec,
            device,
            params.batch_size,
            recipe.model.flip_average,
            recipe.model.vflip_average,
        )
    temperature = fit_temperature(val_logits, val_labels) if params.calibrate else 1.0
    log.info("temperature %.4f (fitted on %d validation images)", temperature, len(val_set))
    return Trained(model=fitted.model.cpu().eval(), fitted=fitted, temperature=temperature)
