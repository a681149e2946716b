"""Stage `train`: transfer learning (or training from scratch) with validation every epoch.

Reads params `model.*` and `train.*`. Writes models/stage-1.pth (weights plus what rebuilds
the model), metrics/train.json and plots/training.csv, and logs the run to MLflow.
"""

from __future__ import annotations

import logging
from pathlib import Path

from greenr.atomic import write_csv, write_json
from greenr.data.dataset import data_version, read_classes
from greenr.data.loader import load_samples
from greenr.errors import exits_cleanly, setup_logging
from greenr.model import checkpoint
from greenr.model.device import configure_threads, resolve_device, use_bf16
from greenr.model.recipe import choose, resolve
from greenr.model.spec import ModelSpec
from greenr.model.training import EpochStats, init_distributed, seed_everything
from greenr.ops import tracking
from greenr.params import load_section
from greenr.paths import CLASSES_FILE, MODEL_PATH, TRAIN_METRICS, TRAINING_PLOT, repo_root

log = logging.getLogger("stages.train")


def write_history(path: Path, history: list[EpochStats]) -> None:
    write_csv(path, (stats.row() for stats in history), list(history[0].row()))


@exits_cleanly
def main() -> None:
    setup_logging()
    model_params, params = load_section("model"), load_section("train")
    root = repo_root()
    device = resolve_device(params.device)
    # Under torchrun (WORLD_SIZE > 1) every rank trains one model together; rank 0 writes outputs.
    rank, world = init_distributed(device)
    threads = configure_threads(params.num_threads)
    seed_everything(params.seed)
    # `auto` becomes the candidates that fit the budget here, once; MLflow and train.json record
    # them and the one kept.
    recipe = resolve(model_params, params)
    asked, params, spec = params.finetune, recipe.train, recipe.spec
    classes = read_classes(root / CLASSES_FILE)
    train_set = load_samples(root, ["train"], classes)
    val_set = load_samples(root, ["val"], classes)
    log.info(
        "training %s (%s, finetune %s) on %s (%d threads, %s): %d train / %d val images of %d classes at %d px",
        recipe.arch,
        "ImageNet weights" if recipe.pretrained else "from scratch",
        " or ".join(recipe.candidates),
        device,
        threads,
        "bf16" if use_bf16(params.precision, device) else "fp32",
        len(train_set),
        len(val_set),
        len(classes),
        spec.image_size,
    )

    if rank != 0:
        choose(recipe, len(classes), train_set, val_set, device)
        return
    if world > 1:
        log.info("data-parallel over %d processes", world)

    with tracking.start_run("train") as run:
        tracking.mlflow.log_params(
            {f"model.{k}": v for k, v in model_params.model_dump().items() if k != "pretrained"}
            | {"model.pretrained": recipe.pretrained}
        )
        tracking.mlflow.log_params(
            {f"train.{k}": v for k, v in params.model_dump().items() if k != "finetune"}
            | {"train.finetune": asked, "finetune_candidates": ",".join(recipe.candidates)}
        )
        tracking.mlflow.log_params(
            {
                "device": str(device),
                "threads": threads,
                "train_images": len(train_set),
                "val_images": len(val_set),
                "classes": ",".join(classes),
            }
        )

        def log_epoch(stats: EpochStats) -> None:
            metrics = {
                **stats.row(),
                "epoch_seconds": stats.seconds,
                "train_images_per_second": stats.images_per_second,
            }
            metrics.pop("epoch")
            tracking.mlflow.log_metrics(metrics, step=stats.epoch)

        single = len(recipe.candidates) == 1
        trained, choice = choose(recipe, len(classes), train_set, val_set, device, log_epoch if single else None)
        result = trained.fitted
        finetune = choice.picked if choice else params.finetune
        if choice:
            for stats in result.history:  # the kept model's curves, as a single recipe logs them
                log_epoch(stats)
            evidence = ("val_loss", "val_acc", "seconds", "over_best", "standard_error")
            for tried in choice.tried:
                tracking.mlflow.log_metrics({f"auto.{tried.finetune}.{k}": getattr(tried, k) for k in evidence})
        tracking.mlflow.set_tag("finetune", finetune)
        meta = {
            "finetune": finetune,
            "best_epoch": result.best_epoch,
            "val_acc": round(result.best.val_acc, 6),
            "val_loss": round(result.best.val_loss, 6),
            "data_version": data_version(root)[0] or "unknown",
        }
        sha256 = checkpoint.save(
            root / MODEL_PATH,
            trained.model,
            ModelSpec(
                recipe.arch,
                classes,
                spec,
                meta=meta,
                temperature=trained.temperature,
                flip_average=model_params.flip_average,
                vflip_average=model_params.vflip_average,
            ),
        )
        write_history(root / TRAINING_PLOT, result.history)
        write_json(
            root / TRAIN_METRICS,
            meta
            | {
                "epochs": params.epochs,
                "pretrained": recipe.pretrained,
                "temperature": trained.temperature,
            }
            | ({"finetune_auto": choice.record()} if choice else {}),
        )
        tracking.mlflow.set_tag("checkpoint_sha256", sha256)
        tracking.mlflow.log_metrics(
            {
                "best_val_acc": result.best.val_acc,
                "best_val_loss": result.best.val_loss,
                "best_epoch": result.best_epoch,
                "temperature": trained.temperature,
            }
        )
        tracking.log_model(trained.model, root / MODEL_PATH, spec)
        log.info(
            "kept epoch %d (val_acc %.3f, temperature %.3f); wrote %s (sha256 %s…); MLflow run %s",
            result.best_epoch,
            result.best.val_acc,
            trained.temperature,
            MODEL_PATH,
            sha256[:12],
            run.info.run_id,
        )


if __name__ == "__main__":
    main()
