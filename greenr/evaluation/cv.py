"""Settings chosen by cross-validation: `greenr cv -S model.arch=... -S train.lr=0.003,0.01`.

The 60-image test split cannot tell settings apart (one image is 1.7 points), so settings are
compared by stratified k-fold cross-validation over the train + val images; the test split is
never read. Per fold, the fold's training images are split again like the pipeline splits them
(train / val in the params' proportions): the recipe trains on the first part exactly as the
train stage would (`greenr.model.recipe.train_classifier`: same code, epoch selection and
temperature fitting on the val part), and predicts the held-out fold once. Every setting is scored
on all its out-of-fold predictions: accuracy and macro F1 with bootstrap intervals, log loss and
expected calibration error (of the calibrated probabilities), and the per-fold accuracies.

A frozen backbone's features are computed once for all images and reused by every fold, and by
every later setting that differs only in what the head's training reads (lr, epochs, schedule, ...).
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from greenr.atomic import atomic_open, write_json
from greenr.data.dataset import Example, read_classes
from greenr.errors import GreenrError
from greenr.evaluation.metrics import (
    bootstrap_intervals,
    classification_metrics,
    expected_calibration_error,
    positive_index,
)
from greenr.hardware import available_cpus, cpu_model
from greenr.params import SECTIONS, describe_error, read_params_file
from greenr.paths import CLASSES_FILE, repo_root

log = logging.getLogger(__name__)
# Sections a setting may override: what the train stage reads (the split only sets proportions).
TUNABLE = ("model", "train")


# ---------------------------------------------------------------------------- settings


def parse_overrides(sets: Sequence[str]) -> list[dict[str, Any]]:
    """`-S key=v1,v2` options (as `dvc exp run -S`, comma = alternatives) -> one dict per combination."""
    axes: list[tuple[str, list[Any]]] = []
    for item in sets:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise GreenrError(f"bad -S {item!r}", "write -S section.key=value (several values: v1,v2)")
        if key.split(".")[0] not in TUNABLE:
            raise GreenrError(f"-S {key}: only {' and '.join(TUNABLE)} params can be cross-validated", "")
        axes.append((key, [yaml.safe_load(v) for v in values.split(",")]))
    keys = [k for k, _ in axes]
    return [dict(zip(keys, combo)) for combo in itertools.product(*(v for _, v in axes))] or [{}]


def setting_name(overrides: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in overrides.items()) or "params.yaml"


def apply(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """params.yaml's sections with the dotted overrides set (a new dict)."""
    out = json.loads(json.dumps(raw))
    for dotted, value in overrides.items():
        *parents, last = dotted.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise GreenrError(f"-S {dotted}: {part} is a value, not a section", "check the key against params.yaml")
        node[last] = value
    return out


def load_sections(raw: dict[str, Any], setting: str) -> dict[str, Any]:
    from pydantic import ValidationError

    sections = {}
    for name in ("split", *TUNABLE, "evaluate"):
        try:
            sections[name] = SECTIONS[name].model_validate(raw.get(name) or {})
        except ValidationError as err:
            raise GreenrError(
                f"setting `{setting}`: {describe_error(name, SECTIONS[name], err)}", "correct the -S value"
            ) from None
    return sections


# ---------------------------------------------------------------------------- folds


def stratified_folds(rows: Sequence[Example], k: int, seed: int) -> np.ndarray:
    """The fold (0..k-1) of each row: per class, sorted by path, shuffled by a seeded generator,
    dealt round-robin (continuing where the previous class stopped, so folds stay balanced)."""
    fold = np.empty(len(rows), dtype=np.int64)
    by_class: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_class.setdefault(row.label, []).append(i)
    if any(len(members) < k for members in by_class.values()):
        raise GreenrError(f"a class has fewer images than the {k} folds", "use fewer folds (--folds) or add images")
    dealt = 0
    for label in sorted(by_class):
        members = sorted(by_class[label], key=lambda i: rows[i].path)
        random.Random(f"{seed}:{label}").shuffle(members)
        for j, i in enumerate(members):
            fold[i] = (j + dealt) % k
        dealt += len(members)
    return fold


def inner_split(labels: np.ndarray, idx: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train, val) indices of a fold's training images; val gets `val_fraction`."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels[idx]):
        members = idx[labels[idx] == c]
        members = members[rng.permutation(len(members))]
        n_val = max(1, int(round(len(members) * val_fraction)))
        val.append(members[:n_val])
        train.append(members[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


# ---------------------------------------------------------------------------- running


@dataclass
class SettingResult:
    name: str
    overrides: dict[str, Any]
    metrics: dict[str, Any]
    fold_accuracy: list[float]
    temperatures: list[float]
    seconds: float
    resolved: dict[str, Any] = field(default_factory=dict)


def feature_key(recipe: Any) -> str:
    """What a frozen backbone's features depend on: settings equal in these share one extraction."""
    from greenr.model.recipe import cached_settings

    train = recipe.train
    return json.dumps(
        [
            recipe.model.model_dump(),
            recipe.pretrained,
            cached_settings(recipe),
            train.feature_views,
            train.augment.model_dump(),
            train.seed,
            train.precision,
            train.gpu_decode,
            train.device,
        ],
        sort_keys=True,
    )


def cross_validate(
    sets: Sequence[str], folds: int = 5, seed: int = 42, threads: int = 0, progress: bool = True
) -> tuple[list[SettingResult], list[Example]]:
    """Run every setting through `folds`-fold CV over train + val; return the results and the pool."""
    import contextlib

    import torch
    from tqdm import tqdm

    from greenr.data.loader import load_samples
    from greenr.model import frozen
    from greenr.model.architectures import build_model
    from greenr.model.device import configure_threads, resolve_device, use_bf16
    from greenr.model.recipe import FrozenFeatures, cached_settings, choose, frozen_features, resolve
    from greenr.model.training import predict_samples, seed_everything, shared_temp_dir

    root = repo_root()
    raw = read_params_file()
    settings = parse_overrides(sets)
    all_sections = [load_sections(apply(raw, o), setting_name(o)) for o in settings]  # fail before any work
    classes = read_classes(root / CLASSES_FILE)
    everything = load_samples(root, ["train", "val"], classes)
    data = everything.subset(sorted(range(len(everything)), key=everything.paths.__getitem__))
    pool = [Example(path, classes[label], "") for path, label in zip(data.paths, data.labels.tolist())]
    labels = data.labels
    fold_of = stratified_folds(pool, folds, seed)
    configure_threads(threads)
    results = []
    banks: dict[str, dict[str, FrozenFeatures]] = {}
    bar = tqdm(total=len(settings) * folds, desc="cv", unit="fold", disable=not progress)
    with contextlib.ExitStack() as stack:
        features_dir = stack.enter_context(shared_temp_dir("cv-features"))
        for overrides, sections in zip(settings, all_sections):
            started = time.perf_counter()
            split = sections["split"]
            val_fraction = split.val / (split.train + split.val)
            recipe = resolve(sections["model"], sections["train"])
            device = resolve_device(recipe.train.device)
            seed_everything(recipe.train.seed)
            bank: dict[str, FrozenFeatures] = {}
            if cached_settings(recipe):
                key = feature_key(recipe)
                if key not in banks:
                    model = build_model(recipe.arch, len(classes), pretrained=recipe.pretrained)
                    # Every image's training views and evaluation views, once, for all folds.
                    folder = features_dir / str(len(banks))
                    banks[key] = frozen_features(model, recipe, data, data, device, folder)
                bank = banks[key]
            logits = torch.zeros(len(pool), len(classes))
            temperatures = []
            picks = []
            for f in range(folds):
                bar.set_postfix_str(f"{setting_name(overrides)} fold {f + 1}/{folds}")
                train_idx, val_idx = inner_split(labels, np.flatnonzero(fold_of != f), val_fraction, seed + f)
                held_out = np.flatnonzero(fold_of == f)

                # `finetune: auto` chooses within each fold, on that fold's own validation part.
                trained, choice = choose(
                    recipe,
                    len(classes),
                    data.subset(train_idx),
                    data.subset(val_idx),
                    device,
                    features={
                        name: FrozenFeatures(b.train.subset(train_idx), b.val.subset(val_idx))
                        for name, b in bank.items()
                    },
                )
                picked = choice.picked if choice else recipe.train.finetune
                picks.append(picked)
                with torch.no_grad():
                    if picked in bank:
                        part = frozen.trainable_part(trained.model, recipe.arch, picked, recipe.model.image_size)
                        fold_logits = frozen.head_logits(part, bank[picked].val.subset(held_out))
                    else:
                        fold_logits = predict_samples(
                            trained.model,
                            data.subset(held_out),
                            recipe.spec,
                            device,
                            recipe.train.batch_size,
                            recipe.model.flip_average,
                            recipe.model.vflip_average,
                        )
                logits[held_out] = fold_logits / trained.temperature
                temperatures.append(trained.temperature)
                bar.update(1)
            probs = logits.double().softmax(1).numpy()
            results.append(
                SettingResult(
                    name=setting_name(overrides),
                    overrides=overrides,
                    metrics=score(labels, probs, fold_of, sections["evaluate"], classes),
                    fold_accuracy=[
                        round(float((probs[fold_of == f].argmax(1) == labels[fold_of == f]).mean()), 4)
                        for f in range(folds)
                    ],
                    temperatures=temperatures,
                    seconds=round(time.perf_counter() - started, 1),
                    # The same command trains in bf16 on a CPU with AMX and in fp32 elsewhere: the
                    # numbers differ by a few images, so the table says which it was.
                    resolved={
                        "finetune": recipe.train.finetune
                        if len(recipe.candidates) == 1
                        else f"auto: {', '.join(picks)}",
                        "pretrained": recipe.pretrained,
                        "device": device.type,
                        "precision": "bf16" if use_bf16(recipe.train.precision, device) else "fp32",
                    },
                )
            )
        banks.clear()  # the memory maps close before their folder goes
    bar.close()
    return results, pool


def score(
    labels: np.ndarray, probs: np.ndarray, fold_of: np.ndarray, evaluate: Any, classes: Sequence[str]
) -> dict[str, Any]:
    """Out-of-fold metrics with bootstrap intervals (the evaluate stage's settings)."""
    report = classification_metrics(labels, probs, classes, positive_index(classes, evaluate.positive_class))
    boot = bootstrap_intervals(labels, probs, max(evaluate.bootstrap_samples, 1), evaluate.confidence, evaluate.seed)
    per_fold = [float((probs[fold_of == f].argmax(1) == labels[fold_of == f]).mean()) for f in np.unique(fold_of)]
    return {
        "accuracy": report["accuracy"],
        "accuracy_interval": boot["accuracy"],
        "macro_f1": report["macro"]["f1"],
        "macro_f1_interval": boot["macro_f1"],
        "log_loss": report["log_loss"],
        "ece": expected_calibration_error(labels, probs),
        "fold_accuracy_sd": round(float(np.std(per_fold, ddof=1)) if len(per_fold) > 1 else 0.0, 4),
        "confidence": evaluate.confidence,
        "n": int(len(labels)),
    }


# ---------------------------------------------------------------------------- reporting


def markdown(results: Sequence[SettingResult], folds: int, seed: int, pool: int, machine: dict[str, Any]) -> str:
    head = (
        f"{folds}-fold stratified CV (fold seed {seed}) over the {pool} train + val images; test split untouched. "
        "Accuracy and macro F1 over all out-of-fold predictions with bootstrap intervals; log loss and ECE of "
        f"the temperature-scaled probabilities. {machine['cpu']}, {machine['cpus']} cores.\n\n"
        "| setting | accuracy [interval] | macro F1 [interval] | log loss | ECE | per-fold accuracy | training "
        "| seconds |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    rows = []
    for r in sorted(results, key=lambda r: (-r.metrics["accuracy"], r.metrics["log_loss"])):
        m = r.metrics
        acc, f1 = m["accuracy_interval"], m["macro_f1_interval"]
        rows.append(
            f"| {r.name} | {m['accuracy']:.4f} [{acc[0]:.3f}, {acc[1]:.3f}] | {m['macro_f1']:.4f} "
            f"[{f1[0]:.3f}, {f1[1]:.3f}] | {m['log_loss']:.4f} | {m['ece']:.4f} | "
            f"{', '.join(f'{a:.3f}' for a in r.fold_accuracy)} | {r.resolved['device']} {r.resolved['precision']} | "
            f"{r.seconds:.0f} |"
        )
    return "\n".join([head, *rows]) + "\n"


def write(results: Sequence[SettingResult], out: Path, folds: int, seed: int, pool: int) -> tuple[Path, Path]:
    """`out`.json (one metrics object per setting, as `dvc metrics show` reads them) and `out`.md."""
    out = out if out.is_absolute() else repo_root() / out
    json_path, md_path = out.with_suffix(".json"), out.with_suffix(".md")
    payload = {
        r.name: r.metrics
        | {"fold_accuracy": r.fold_accuracy, "temperatures": r.temperatures, "seconds": r.seconds}
        | {"overrides": r.overrides, "resolved": r.resolved}
        for r in results
    }
    machine = {"cpu": cpu_model(), "cpus": available_cpus()}
    write_json(json_path, {"folds": folds, "fold_seed": seed, "images": pool, "machine": machine, "settings": payload})
    with atomic_open(md_path, "w", encoding="utf-8") as handle:
        handle.write(markdown(results, folds, seed, pool, machine))
    return json_path, md_path
