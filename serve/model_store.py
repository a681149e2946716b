"""The model being served: loaded from the DVC-tracked checkpoint, swapped atomically on reload.

A `LoadedModel` is immutable. Requests take a reference to the current one when they
start and keep it to the end, so a reload never changes the model under a request in flight;
the old model is freed when the last request holding it finishes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from greenr import scm
from greenr.errors import GreenrError
from greenr.model import checkpoint
from greenr.model.checkpoint import Checkpoint
from greenr.ops.drift import DriftReference
from greenr.paths import DRIFT_REFERENCE, DVC_LOCK, EVALUATE_METRICS, repo_root

log = logging.getLogger("serve.model")


@dataclass(frozen=True)
class LoadedModel:
    model: nn.Module
    ckpt: Checkpoint
    md5: str  # what dvc.lock records for the file
    git_rev: str
    source: str  # "workspace" or "rev:<rev>"
    metrics: dict[str, Any] | None
    dvc_lock_md5: str | None
    # Statistics of the images this model was trained on (None: drift is not monitored).
    drift_reference: DriftReference | None = None
    loaded_at: float = field(default_factory=time.time)

    @property
    def classes(self) -> list[str]:
        return self.ckpt.classes

    def version(self) -> dict[str, Any]:
        """Short identity of the model, returned with every prediction."""
        return {
            "arch": self.ckpt.arch,
            "sha256": self.ckpt.sha256,
            "md5": self.md5,
            "git_rev": self.git_rev,
            "source": self.source,
        }

    def describe(self) -> dict[str, Any]:
        return {
            **self.version(),
            "classes": self.classes,
            "image_size": self.ckpt.image_size,
            "preprocessing": self.ckpt.preprocessing.to_dict(),
            "meta": self.ckpt.meta,
            "dvc_lock_md5": self.dvc_lock_md5,
            "matches_dvc_lock": None if self.dvc_lock_md5 is None else self.dvc_lock_md5 == self.md5,
            "evaluate_metrics": self.metrics,
            "drift_monitored": self.drift_reference is not None,
            "loaded_at": self.loaded_at,
        }


def _lock_md5(lock_text: str | None, model_path: str) -> str | None:
    """The md5 that dvc.lock records for `model_path` (any stage's outs)."""
    try:
        lock = yaml.safe_load(lock_text or "") or {}
        for stage in (lock.get("stages") or {}).values():
            for out in stage.get("outs") or []:
                if out.get("path") == model_path:
                    return out.get("md5")
    except (yaml.YAMLError, AttributeError, TypeError):
        return None
    return None


def _pull(root: Path, rel: str) -> None:
    """`dvc pull` one file; a failure becomes a GreenrError with dvc's last lines."""
    log.info("%s is missing: pulling it with `dvc pull %s`", rel, rel)
    scm.dvc(
        "pull",
        rel,
        cwd=root,
        capture=True,
        timeout=300,
        fix="start the object store (`greenr store start`) and check credentials, or train it with `dvc repro`",
    )


def _drift_reference(text: str | None, where: str) -> DriftReference | None:
    """The drift reference committed beside the model; a missing or bad one only turns drift off."""
    if text is None:
        log.warning("no drift reference at %s: drift is not monitored (run `dvc repro drift_reference`)", where)
        return None
    try:
        return DriftReference.parse(text, where)
    except GreenrError as exc:
        log.warning("%s: drift is not monitored", exc)
        return None


def load_model(
    model_path: str,
    rev: str | None = None,
    pull: bool = True,
    threads: int = 0,
    root: Path | None = None,
    drift_reference: str | None = DRIFT_REFERENCE,
) -> LoadedModel:
    """Read, verify and build the checkpoint; raises GreenrError with a fix on any failure.

    Also reads the evaluate metrics and the drift reference of the same revision (workspace
    files, or git at `rev`); `drift_reference=None` leaves drift unmonitored.
    """
    root = root or repo_root()
    path = Path(model_path)
    rel = path.relative_to(root).as_posix() if path.is_absolute() and path.is_relative_to(root) else path.as_posix()
    if rev:
        import dvc.api  # slow import; only needed for revisions

        git_rev = scm.resolve(rev, cwd=root)
        if git_rev is None:
            raise GreenrError(
                f"MODEL_REV {rev!r} is not a git revision of {root}",
                "use a commit, tag, branch or experiment name from `git log`/`dvc exp list`",
            )
        try:
            with dvc.api.open(rel, repo=str(root), rev=rev, mode="rb") as handle:
                data = handle.read()
        except Exception as exc:
            raise GreenrError(
                f"could not read {rel} at revision {rev!r} from DVC: {type(exc).__name__}: {exc}",
                "push it with `dvc push` from where it was trained and check the remote (`greenr store status`)",
            ) from None
        metrics_text = scm.show(git_rev, EVALUATE_METRICS, cwd=root)
        lock_text = scm.show(git_rev, DVC_LOCK, cwd=root)
        drift_text = scm.show(git_rev, drift_reference, cwd=root) if drift_reference else None
        source = f"rev:{rev}"
    else:
        full = path if path.is_absolute() else root / path
        if not full.is_file() and pull:
            _pull(root, rel)
        data = _read(full)
        commit, dirty = scm.head(cwd=root)
        git_rev = f"{commit}-dirty" if dirty else commit
        metrics_file = root / EVALUATE_METRICS
        metrics_text = metrics_file.read_text(encoding="utf-8") if metrics_file.is_file() else None
        lock_file = root / DVC_LOCK
        lock_text = lock_file.read_text(encoding="utf-8") if lock_file.is_file() else None
        drift_file = root / drift_reference if drift_reference else None
        drift_text = drift_file.read_text(encoding="utf-8") if drift_file and drift_file.is_file() else None
        source = "workspace"

    ckpt = checkpoint.from_bytes(data, source=f"{rel}" + (f"@{rev}" if rev else ""))
    if threads:
        torch.set_num_threads(threads)
    model = ckpt.build("cpu")
    _warm_up(model, ckpt)
    try:
        metrics = json.loads(metrics_text) if metrics_text else None
    except json.JSONDecodeError:
        metrics = None
    md5 = hashlib.md5(data).hexdigest()
    loaded = LoadedModel(
        model=model,
        ckpt=ckpt,
        md5=md5,
        git_rev=git_rev,
        source=source,
        metrics=metrics,
        dvc_lock_md5=_lock_md5(lock_text, rel),
        drift_reference=_drift_reference(drift_text, f"{drift_reference}@{git_rev[:12]}") if drift_reference else None,
    )
    log.info(
        "loaded %s (%s, %d classes, %d px) sha256 %s at %s",
        rel,
        ckpt.arch,
        len(ckpt.classes),
        ckpt.image_size,
        ckpt.sha256[:12],
        git_rev[:12],
    )
    return loaded


def _read(full: Path) -> bytes:
    try:
        return full.read_bytes()
    except FileNotFoundError:
        raise GreenrError(
            f"checkpoint {full} does not exist", "run `dvc repro` to train it or `dvc pull models/stage-1.pth`"
        ) from None
    except OSError as exc:
        raise GreenrError(f"checkpoint {full} cannot be read: {exc}", "check the file's permissions") from None


@torch.inference_mode()
def _warm_up(model: nn.Module, ckpt: Checkpoint) -> None:
    """One forward pass so the first request does not pay for lazy initialisation."""
    from greenr.model.inference import predict_proba

    size = ckpt.image_size
    predict_proba(model, torch.zeros(1, 3, size, size, dtype=torch.uint8), ckpt.preprocessing)


class ModelStore:
    """Holds the current model (or the reason there is none) and swaps it atomically."""

    def __init__(
        self, model_path: str, rev: str | None, pull: bool, threads: int, drift_reference: str | None = DRIFT_REFERENCE
    ) -> None:
        self.model_path = model_path
        self.drift_reference = drift_reference
        self.rev = rev
        self.pull = pull
        self.threads = threads
        self.current: LoadedModel | None = None
        self.error: str | None = None
        self.loading = False
        self._reload_lock = threading.Lock()

    def load(self, rev: str | None = None, *, initial: bool = False) -> LoadedModel:
        """Load `rev` (default: the configured one) and swap it in; on failure keep the old model.

        Runs in a worker thread; concurrent reloads queue behind each other.
        """
        with self._reload_lock:
            self.loading = True
            target = rev if rev is not None else self.rev
            try:
                loaded = load_model(
                    self.model_path, target or None, self.pull, self.threads, drift_reference=self.drift_reference
                )
            except GreenrError as err:
                self.error = str(err)
                log.error("model load failed: %s", err)
                raise
            except Exception as exc:
                self.error = f"unexpected error loading the model: {type(exc).__name__}: {exc}"
                log.exception("model load failed")
                raise GreenrError(self.error) from exc
            finally:
                self.loading = False
            self.current = loaded  # one reference assignment: atomic for readers
            self.rev = target
            self.error = None
            return loaded
