"""The whole training recipe, from resolved params to a calibrated model: what the train stage
runs once and `greenr cv` runs per fold, so both measure the same thing."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from greenr.data.images import Preprocessing, flip_view_names
from greenr.data.tensors import TensorDataset
from greenr.model import frozen
from greenr.model.architectures import build_model, get_arch, resolve_finetune, resolve_pretrained
from greenr.model.calibration import fit_temperature
from greenr.model.device import use_bf16
from greenr.model.inference import predict_flip_averaged_logits
from greenr.model.training import EpochStats, FitResult, fit
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
    """Backbone features of a training set (V views) and a validation set (its test-time flip views)."""

    train: torch.Tensor
    val: torch.Tensor


@dataclass
class Trained:
    model: nn.Module
    fitted: FitResult
    temperature: float


def frozen_features(
    model: nn.Module,
    recipe: Recipe,
    train_images: torch.Tensor,
    val_images: torch.Tensor,
    device: torch.device,
) -> FrozenFeatures:
    params = recipe.train
    bf16 = use_bf16(params.precision, device)
    embed = lambda images, views: frozen.extract(
        model, recipe.arch, images, recipe.spec, views, params.augment, params.seed, device, params.batch_size, bf16
    )
    return FrozenFeatures(
        train=embed(train_images, frozen.training_views(params.feature_views)),
        val=embed(val_images, flip_view_names(recipe.model.flip_average, recipe.model.vflip_average)),
    )


def train_classifier(
    recipe: Recipe,
    num_classes: int,
    train_set: TensorDataset,
    val_set: TensorDataset,
    device: torch.device,
    on_epoch: Callable[[EpochStats], None] | None = None,
    features: FrozenFeatures | None = None,
) -> Trained:
    """Build, train and calibrate a model as `recipe` says.

    Frozen backbones train their head on cached features (pass `features` to reuse ones already
    computed, as cross-validation does for all folds at once); every other setting runs `fit`.
    The temperature is fitted on the validation logits when `train.calibrate`.
    """
    params = recipe.train
    torch.manual_seed(params.seed)  # the head's initial weights: the same in every run and fold
    model = build_model(recipe.arch, num_classes, pretrained=recipe.pretrained)
    if params.finetune == "frozen":
        if features is None:
            features = frozen_features(model, recipe, train_set.images, val_set.images, device)
        fitted = frozen.fit_head(
            model, recipe.arch, features.train, train_set.labels, features.val, val_set.labels, params, on_epoch
        )
        with torch.no_grad():
            val_logits = frozen.head_logits(getattr(model, frozen.head_name(recipe.arch)), features.val)
    else:
        fitted = fit(model, recipe.arch, train_set, val_set, recipe.spec, params, device, on_epoch)
        val_logits = predict_flip_averaged_logits(
            model,
            val_set.images,
            recipe.spec,
            recipe.model.flip_average,
            recipe.model.vflip_average,
            device,
            params.batch_size,
        )
    temperature = fit_temperature(val_logits, val_set.labels) if params.calibrate else 1.0
    log.info("temperature %.4f (fitted on %d validation images)", temperature, len(val_set))
    return Trained(model=fitted.model.cpu().eval(), fitted=fitted, temperature=temperature)
