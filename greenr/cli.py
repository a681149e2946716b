"""`greenr`: the project's commands (main job, object store, data, MLflow UI)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from greenr.errors import GreenrError, exits_cleanly, setup_logging
from greenr.paths import DATA_DIR, METRICS_DIR, main_checkout, repo_root

log = logging.getLogger("greenr")


def _env() -> dict[str, str]:
    """Subprocess environment: this venv's tools first on PATH (DVC stages call `python`)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    return env


def dvc(*args: str, check: bool = True) -> int:
    """Run the real dvc CLI in the project, streaming its output."""
    log.info("$ dvc %s", " ".join(args))
    code = subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=repo_root(), env=_env()).returncode
    if check and code != 0:
        raise GreenrError(f"`dvc {' '.join(args)}` failed (exit {code})", "see DVC's message above")
    return code


def _has_images(folder: Path) -> bool:
    return folder.is_dir() and any(p.is_file() for p in folder.rglob("*"))


def ensure_data(root: Path) -> None:
    """data/ from the DVC remote if it has them, else ingested from DATA_SOURCE or the web."""
    if _has_images(root / DATA_DIR):
        return
    if (root / "data.dvc").is_file():
        log.info("no data/ yet: trying `dvc pull data.dvc`")
        if dvc("pull", "data.dvc", check=False) == 0 and _has_images(root / DATA_DIR):
            return
        log.warning("the DVC remote does not have this data version yet; ingesting instead")
    from greenr import ingest

    report = ingest.ingest(ingest.default_source(), root / DATA_DIR)
    print(report.summary())


def print_metrics(root: Path) -> None:
    path = root / METRICS_DIR / "evaluate.json"
    if not path.is_file():
        raise GreenrError(f"{path} does not exist", "run `greenr run` or `dvc repro`")
    report = json.loads(path.read_text())
    boot = report.get("bootstrap") or {}
    acc_ci = boot.get("accuracy")
    f1_ci = boot.get("macro_f1")
    ci = lambda pair: f"  [{pair[0]:.3f}, {pair[1]:.3f}]" if pair else ""
    lines = [
        f"Test metrics ({report['n']} images, {METRICS_DIR}/evaluate.json):",
        f"  accuracy   {report['accuracy']:.4f}{ci(acc_ci)}",
        f"  macro F1   {report['macro']['f1']:.4f}{ci(f1_ci)}",
        f"  ROC AUC    {report['roc_auc']}",
        f"  log loss   {report['log_loss']:.4f}",
    ]
    for name, row in report["per_class"].items():
        lines.append(
            f"  {name:<10} precision {row['precision']:.3f} recall {row['recall']:.3f} "
            f"f1 {row['f1']:.3f} (n={row['support']})"
        )
    lines.append(f"  confusion matrix (rows actual, cols predicted): {report['confusion_matrix']}")
    if boot:
        lines.append(
            f"  intervals: {boot['confidence']:.0%} bootstrap over {boot['samples']} resamples; "
            "small test sets make single numbers noisy"
        )
    print("\n".join(lines))


def cmd_run(args: argparse.Namespace) -> None:
    from greenr import objectstore
    from greenr.params import validate_all

    root = repo_root()
    validate_all()
    with objectstore.store_available(root):
        ensure_data(root)
        dvc("repro", *(["--force"] if args.force else []), "--pull")
        dvc("push")
    print_metrics(root)


def cmd_store(args: argparse.Namespace) -> None:
    from greenr import objectstore

    root = repo_root()
    if args.action == "start":
        remote = objectstore.ensure_credentials(root)
        if objectstore.endpoint_answers(remote.endpoint) and objectstore.LocalStore(remote).pid() is None:
            objectstore.check_remote(remote)
            print(f"an object store already answers at {remote.endpoint}; using it as is")
            return
        pid = objectstore.LocalStore(remote).start()
        print(
            f"local object store running (pid {pid}): endpoint {remote.endpoint}, "
            f"bucket {remote.bucket}; stop it with `greenr store stop`"
        )
    elif args.action == "stop":
        store = objectstore.LocalStore(objectstore.read_remote(root))
        print("stopped" if store.stop() else "the local object store was not running")
    elif args.action == "status":
        remote = objectstore.read_remote(root)
        pid = objectstore.LocalStore(remote).pid()
        answers = objectstore.endpoint_answers(remote.endpoint)
        print(
            f"remote {remote.name}: s3://{remote.bucket}/{remote.prefix} at {remote.endpoint}; "
            f"{'answering' if answers else 'not answering'}"
            f"{f'; local store pid {pid}' if pid else ''}"
        )
    else:
        remote = objectstore.read_remote(root)
        objectstore.check_remote(remote)
        print(f"ok: s3://{remote.bucket} at {remote.endpoint} accepts these credentials")


def cmd_transfer(args: argparse.Namespace) -> None:
    from greenr import objectstore

    with objectstore.store_available(repo_root()):
        dvc(args.command, *args.targets)


def cmd_mlflow_ui(args: argparse.Namespace) -> None:
    from greenr import tracking

    uri = tracking.tracking_uri()
    print(f"MLflow UI for {uri} on http://127.0.0.1:{args.port} (Ctrl-C stops it)")
    cmd = [
        str(Path(sys.executable).parent / "mlflow"),
        "ui",
        "--host",
        "127.0.0.1",
        "--port",
        str(args.port),
        "--backend-store-uri",
        uri,
    ]
    if artifacts := tracking.default_artifact_location():
        cmd += ["--default-artifact-root", artifacts]
    raise SystemExit(subprocess.run(cmd, env=_env(), cwd=main_checkout()).returncode)


def cmd_params(args: argparse.Namespace) -> None:
    from greenr.params import validate_all

    sections = validate_all()
    print(f"params.yaml is valid ({', '.join(sections)})")


def cmd_metrics(args: argparse.Namespace) -> None:
    print_metrics(repo_root())


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="greenr", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="main job: object store, data, dvc repro, dvc push, test metrics")
    run.add_argument("--force", action="store_true", help="rerun every stage (dvc repro --force)")
    run.set_defaults(func=cmd_run)
    store = sub.add_parser("store", help="the local MinIO-compatible object store")
    store.add_argument("action", choices=["start", "stop", "status", "check"])
    store.set_defaults(func=cmd_store)
    for name in ("push", "pull"):
        transfer = sub.add_parser(name, help=f"dvc {name}, checking the object store first")
        transfer.add_argument("targets", nargs="*")
        transfer.set_defaults(func=cmd_transfer)
    # `ingest` parses its own options (see greenr.ingest.main); listed here for --help.
    sub.add_parser("ingest", help="fill data/ from DATA_SOURCE or the public URL template (greenr ingest --help)")
    ui = sub.add_parser("mlflow-ui", help="serve the MLflow UI on 127.0.0.1")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(func=cmd_mlflow_ui)
    params = sub.add_parser("params", help="validate params.yaml")
    params.add_argument("action", choices=["check"])
    params.set_defaults(func=cmd_params)
    metrics = sub.add_parser("metrics", help="print the test metrics")
    metrics.set_defaults(func=cmd_metrics)
    return top


@exits_cleanly
def main(argv: list[str] | None = None) -> None:
    setup_logging()
    # SIGTERM unwinds like Ctrl-C, so a local object store this command started is stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["ingest"]:
        from greenr import ingest

        raise SystemExit(ingest.main(argv[1:]))
    args = parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
