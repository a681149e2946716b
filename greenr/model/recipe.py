"""The whole training recipe, from resolved params to a calibrated model: what the train stage
runs once and `greenr cv` runs per fold, so both measure the same thing.

`train.finetune: auto` trains every candidate setting of the arch that fits `train.budget` and
keeps the cheapest one within one standard error of the lowest validation log loss (`choose`):
evidence from the user's own data, not the 400 photos the defaults were tuned on.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from greenr.data.images import Preprocessing, flip_view_names
from greenr.data.loader import Samples
from greenr.model import frozen
from greenr.model.architectures import auto_candidates, build_model, get_arch, resolve_pretrained
from greenr.model.calibration import fit_temperature
from greenr.model.device import use_bf16
from greenr.model.training import EpochStats, FitResult, fit, predict_samples, shared_temp_dir
from greenr.params import ModelParams, TrainParams

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """Params with every `auto` resolved for the arch: what actually trains (and is recorded).

    With `finetune: auto`, `train.finetune` is the cheapest candidate and `candidates` lists every
    setting `choose` tries; `costs` holds each one's estimated training cost (`finetune_costs`)."""

    model: ModelParams
    train: TrainParams
    pretrained: bool
    candidates: tuple[str, ...] = ()
    over_budget: tuple[str, ...] = ()
    costs: dict[str, float] = field(default_factory=dict)

    @property
    def arch(self) -> str:
        return self.model.arch

    @property
    def spec(self) -> Preprocessing:
        return get_arch(self.arch).preprocessing(self.model.image_size)

    def with_finetune(self, finetune: str) -> Recipe:
        """This recipe with one finetune setting (a candidate of `auto`)."""
        return Recipe(self.model, self.train.model_copy(update={"finetune": finetune}), self.pretrained, (finetune,))


def finetune_costs(arch: str, image_size: int, train: TrainParams, finetunes: Sequence[str]) -> dict[str, float]:
    """Each setting's training compute per training image, as a multiple of the frozen recipe's.

    Counted in FLOPs (one probe forward of each part), so the same on every machine and load:
    frozen runs the backbone once per view; top adds `epochs` steps of its top part (a step is
    about three forwards) on the same cached activations; discriminative and full run `epochs`
    steps of the whole network. Validation passes are left out (a small share).
    """
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(arch, 2, pretrained=False).eval()
    probe = torch.zeros(1, 3, image_size, image_size)

    def flops(part: nn.Module, x: torch.Tensor) -> int:
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            part(x)
        return counter.get_total_flops()

    whole = flops(model, probe)
    views = train.feature_views + 2
    costs = {"frozen": 1.0, "discriminative": train.epochs * 3 / views, "full": train.epochs * 3 / views}
    if "top" in finetunes:
        split = get_arch(arch).split_top
        assert split is not None
        lower, top = split(model, image_size)
        with torch.no_grad():
            activations = lower(probe)
        # Its extraction is frozen's (one pass computes both), so this is what top adds.
        costs["top"] = train.epochs * 3 * flops(top, activations) / whole / views
    return {name: round(costs[name], 3) for name in finetunes}


def resolve(model_params: ModelParams, train_params: TrainParams) -> Recipe:
    """Resolve `pretrained: auto` and `finetune: auto` for the arch, once: `auto` becomes the
    arch's candidates that fit `train.budget`, cheapest first."""
    pretrained = resolve_pretrained(model_params.arch, model_params.pretrained)
    candidates = auto_candidates(model_params.arch, pretrained, train_params.finetune)
    over: tuple[str, ...] = ()
    costs: dict[str, float] = {}
    if len(candidates) > 1:
        costs = finetune_costs(model_params.arch, model_params.image_size, train_params, candidates)
        kept: list[str] = []
        spent = 0.0
        for name in candidates:
            if not kept or spent + costs[name] <= train_params.budget:
                kept.append(name)
                spent += costs[name]
        over = tuple(name for name in candidates if name not in kept)
        candidates = tuple(kept)
    train = train_params.model_copy(update={"finetune": candidates[0]})
    return Recipe(model_params, train, pretrained, candidates, over, costs)


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
    val_logits: torch.Tensor  # before the temperature: what `choose` scores


def feature_batch_size(params: TrainParams, device: torch.device) -> int:
    return params.feature_batch_size or (256 if device.type == "cuda" else 64)


def cached_settings(recipe: Recipe) -> list[str]:
    """The settings of `recipe` (its candidates) that train on cached backbone outputs."""
    return [name for name in recipe.candidates or (recipe.train.finetune,) if name in frozen.CACHED]


def frozen_features(
    model: nn.Module, recipe: Recipe, train: Samples, val: Samples, device: torch.device, folder: Path
) -> dict[str, FrozenFeatures]:
    """What each cached setting of `recipe` trains on, in `folder` (<setting>-train.npy,
    <setting>-val.npy), from one pass over the images."""
    params = recipe.train
    bf16 = use_bf16(params.precision, device)
    size = feature_batch_size(params, device)
    settings = cached_settings(recipe)

    def embed(samples: Samples, views: list[str], name: str) -> dict[str, frozen.FeatureBank]:
        return frozen.extract(
            model,
            recipe.arch,
            samples,
            recipe.spec,
            views,
            params.augment,
            params.seed,
            device,
            {setting: folder / f"{setting}-{name}.npy" for setting in settings},
            size,
            bf16,
            params.gpu_decode,
        )

    train_banks = embed(train, frozen.training_views(params.feature_views), "train")
    val_banks = embed(val, flip_view_names(recipe.model.flip_average, recipe.model.vflip_average), "val")
    return {setting: FrozenFeatures(train_banks[setting], val_banks[setting]) for setting in settings}


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
                features = frozen_features(model, recipe, train_set, val_set, device, folder)[params.finetune]
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
    return Trained(model=fitted.model.cpu().eval(), fitted=fitted, temperature=temperature, val_logits=val_logits)


@dataclass(frozen=True)
class Tried:
    """One candidate of `finetune: auto`, trained on train and scored on val."""

    finetune: str
    val_loss: float
    val_acc: float
    seconds: float
    over_best: float  # mean validation log loss above the lowest candidate's
    standard_error: float  # of that difference, paired over the validation images


@dataclass(frozen=True)
class Choice:
    """What `finetune: auto` tried and kept: recorded in metrics/train.json and MLflow."""

    picked: str
    tried: list[Tried]
    over_budget: tuple[str, ...]
    costs: dict[str, float]
    budget: float

    def record(self) -> dict:
        """What metrics/train.json keeps: deterministic for the machine and data (no seconds)."""
        return {
            "picked": self.picked,
            "by": RULE,
            "budget": self.budget,
            "estimated_cost": self.costs,
            "over_budget": list(self.over_budget),
            "tried": {
                t.finetune: {
                    "val_loss": t.val_loss,
                    "val_acc": t.val_acc,
                    "over_best": t.over_best,
                    "standard_error": t.standard_error,
                }
                for t in self.tried
            },
        }


RULE = "the cheapest within one standard error of the lowest validation log loss"


def one_standard_error_pick(losses: dict[str, torch.Tensor]) -> tuple[str, dict[str, tuple[float, float]]]:
    """The first (cheapest) candidate of `losses` (per-image validation log losses, cheapest first)
    whose mean is within one standard error of the lowest mean: the one-standard-error rule of
    model selection, with the error of the paired difference over the same images. A pricier
    recipe must beat a cheaper one by more than a few dozen images' noise before it is kept.
    Returns the pick and, per candidate, (mean excess over the lowest, its standard error)."""
    best = min(losses, key=lambda name: float(losses[name].double().mean()))
    evidence = {}
    for name, loss in losses.items():
        excess = loss.double() - losses[best].double()
        error = float(excess.std() / len(excess) ** 0.5) if len(excess) > 1 else 0.0
        evidence[name] = (round(float(excess.mean()), 6), round(error, 6))
    picked = next(name for name, (excess, error) in evidence.items() if excess <= error)
    return picked, evidence


def choose(
    recipe: Recipe,
    num_classes: int,
    train_set: Samples,
    val_set: Samples,
    device: torch.device,
    on_epoch: Callable[[EpochStats], None] | None = None,
    features: dict[str, FrozenFeatures] | None = None,
) -> tuple[Trained, Choice | None]:
    """Train `recipe`; with several candidates (`finetune: auto`) train each on `train_set` and
    keep the cheapest within one standard error of the lowest validation log loss (a proper score:
    steadier than accuracy on a few dozen images; `one_standard_error_pick`). Every candidate
    starts from the same seed, so the kept model is the one its setting gives alone. `on_epoch`
    sees the epochs of a single recipe only (the caller replays the kept model's history
    otherwise). The choice is None without candidates to compare."""
    if len(recipe.candidates) <= 1:
        one = None if features is None else features.get(recipe.train.finetune)
        return train_classifier(recipe, num_classes, train_set, val_set, device, on_epoch, one), None
    with contextlib.ExitStack() as stack:
        if features is None and cached_settings(recipe):
            folder = Path(stack.enter_context(shared_temp_dir("features")))
            model = build_model(recipe.arch, num_classes, pretrained=recipe.pretrained)
            features = frozen_features(model, recipe, train_set, val_set, device, folder)
        models: dict[str, Trained] = {}
        losses: dict[str, torch.Tensor] = {}
        seconds: dict[str, float] = {}
        for name in recipe.candidates:
            started = time.perf_counter()
            models[name] = train_classifier(
                recipe.with_finetune(name), num_classes, train_set, val_set, device, None, (features or {}).get(name)
            )
            seconds[name] = round(time.perf_counter() - started, 1)
            losses[name] = F.cross_entropy(models[name].val_logits.double(), val_set.label_tensor, reduction="none")
            log.info("finetune %s: val_loss %.4f (%.0f s)", name, float(losses[name].mean()), seconds[name])
        features = None  # the memory maps close before their folder goes
    picked, evidence = one_standard_error_pick(losses)
    tried = [
        Tried(
            name,
            round(float(losses[name].mean()), 6),
            round(float((models[name].val_logits.argmax(1) == val_set.label_tensor).double().mean()), 6),
            seconds[name],
            *evidence[name],
        )
        for name in recipe.candidates
    ]
    log.info("finetune auto: kept %s of %s (%s)", picked, ", ".join(recipe.candidates), RULE)
    return models[picked], Choice(picked, tried, recipe.over_budget, recipe.costs, recipe.train.budget)
