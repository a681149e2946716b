"""`greenr`: every command of the project, as sub-commands of one CLI.

The parser lives here; each handler imports the module that does the work only when that
command runs, so `greenr --help` and light commands start quickly.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from greenr import processes, scm
from greenr.errors import GreenrError, exits_cleanly, setup_logging
from greenr.paths import DATA_DIR, EVALUATE_METRICS, main_checkout, repo_root

if TYPE_CHECKING:
    from greenr.ops.inbox import TrustPolicy
    from serve.settings import Settings

log = logging.getLogger("greenr")


# ---------------------------------------------------------------------------- the main job


def print_metrics(root: Path) -> None:
    from greenr.evaluation.metrics import read_metrics_file, summary

    print(summary(read_metrics_file(root / EVALUATE_METRICS)))


def cmd_run(args: argparse.Namespace) -> None:
    from greenr import pipeline

    root = repo_root()
    pipeline.run(root, force=args.force, on_ingest=lambda report: print(report.summary()))
    print_metrics(root)


# ---------------------------------------------------------------------------- data and the store


def cmd_ingest(args: argparse.Namespace) -> None:
    from greenr.data import ingest

    report = ingest.ingest(
        args.source or ingest.default_source(),
        args.dest or repo_root() / DATA_DIR,
        classes=[c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None,
        count=args.count,
        workers=args.workers,
        timeout=args.timeout,
        retries=args.retries,
        refresh=args.refresh,
        prune=args.prune,
        dvc_add=not args.no_dvc_add,
    )
    print(report.summary())


def cmd_store(args: argparse.Namespace) -> None:
    from greenr.ops import objectstore

    if args.action == "start":

        def ready(remote: objectstore.Remote, pid: int) -> None:
            print(
                f"local object store running (pid {pid}): endpoint {remote.endpoint}, "
                f"bucket {remote.bucket}; Ctrl-C or SIGTERM stops it",
                flush=True,
            )

        started = objectstore.start_store(on_ready=ready if args.foreground else None)
        if started.exit_code is not None:
            raise SystemExit(started.exit_code)
        if started.pid is None:
            print(f"an object store already answers at {started.remote.endpoint}; using it as is")
            return
        print(
            f"local object store running (pid {started.pid}): endpoint {started.remote.endpoint}, "
            f"bucket {started.remote.bucket}; stop it with `greenr store stop`"
        )
    elif args.action == "stop":
        print("stopped" if objectstore.stop_store() else "the local object store was not running")
    elif args.action == "status":
        status = objectstore.store_status()
        remote = status.remote
        print(
            f"remote {remote.name}: s3://{remote.bucket}/{remote.prefix} at {remote.endpoint}; "
            f"{'answering' if status.answers else 'not answering'}"
            f"{f'; local store pid {status.local_pid}' if status.local_pid else ''}"
        )
    else:
        remote = objectstore.check_store()
        print(f"ok: s3://{remote.bucket} at {remote.endpoint} accepts these credentials")


def cmd_transfer(args: argparse.Namespace) -> None:
    from greenr.ops import objectstore

    with objectstore.store_available(repo_root()):
        scm.dvc(args.command, *args.targets)


def cmd_params(args: argparse.Namespace) -> None:
    from greenr.params import validate_all

    sections = validate_all()
    print(f"params.yaml is valid ({', '.join(sections)})")


def cmd_metrics(args: argparse.Namespace) -> None:
    print_metrics(repo_root())


def _server_settings() -> Settings:
    """The server's settings (environment, .env): the inbox commands apply its trust and image limits."""
    from pydantic import ValidationError

    from serve.settings import Settings

    try:
        return Settings()
    except ValidationError as exc:
        raise GreenrError(f"bad server setting: {exc}", "fix the environment variable (or .env entry) named") from None


def cmd_inbox(args: argparse.Namespace) -> None:
    from greenr.ops import inbox

    root = repo_root()
    settings = _server_settings()
    given = getattr(args, "min_agreeing", None)
    min_agreeing = settings.feedback_min_agreeing if given is None else given
    policy = inbox.TrustPolicy(min_agreeing, trust_feedback=getattr(args, "trust_feedback", False))
    if args.action == "accept":
        limits = inbox.ImageLimits(settings.max_upload_bytes, settings.max_pixels)
        print(inbox.accept_trusted(root, policy, limits, new_classes=args.new_class or ()).summary())
        return
    if args.action == "label":
        record, box = inbox.label_item(root, args.item, args.label, args.new_class, min_agreeing)
        print(f"{record.sha256[:12]} labeled {record.label} in {box.where}")
        return
    overview = inbox.overview(root, policy)
    if args.json:
        print(json.dumps(overview.totals(), indent=2))
        return
    for box, status in zip(overview.inboxes, overview.statuses):
        labeled = ", ".join(f"{k} {v}" for k, v in status["labeled"].items()) or "none"
        print(
            f"inbox {status['where']}: {status['pending']} pending (labeled: {labeled}; "
            f"{status['acceptable']} acceptable as they stand ({_policy_text(policy)}); "
            f"{status['to_review']} to review, {status['conflicts']} with conflicting labels, "
            f"{status['uncertain']} captured as uncertain); {status['accepted']} accepted, "
            f"{status['rejected']} rejected"
        )
        if args.items:
            for record in sorted(box.records(), key=lambda r: r.received):
                guess = f" predicted {record.predicted} ({record.confidence:.2f})" if record.confidence else ""
                votes = ", ".join(f"{label} {n}" for label, n in record.vote_counts().items())
                print(
                    f"  {record.sha256[:12]}  {record.label or '(review)':<10} {record.source:<9} "
                    f"{record.received}{guess}"
                    + (f"  votes: {votes}" if votes else "")
                    + ("  reviewed" if record.reviewed else "")
                )


def _policy_text(policy: TrustPolicy) -> str:
    if policy.trust_feedback:
        return "a reviewer's label or one vote, --trust-feedback"
    return f"a reviewer's label or {policy.min_agreeing} agreeing votes"


# ---------------------------------------------------------------------------- experiments


def cmd_grid(args: argparse.Namespace) -> None:
    from greenr.evaluation import grid

    if args.action == "queue":
        grid.queue(args.sets, args.name)
    elif args.action == "run":
        grid.run_queued(args.jobs)
    elif args.action == "show":
        grid.show(args.base, args.metric, args.md)
    else:
        grid.best(args.base, args.metric, args.apply)


def cmd_cv(args: argparse.Namespace) -> None:
    from greenr.evaluation import cv

    results, pool = cv.cross_validate(args.sets or [], folds=args.folds, seed=args.seed, threads=args.threads)
    json_path, md_path = cv.write(results, args.out, args.folds, args.seed, len(pool))
    print(md_path.read_text(encoding="utf-8"))
    print(f"wrote {json_path} and {md_path}")


def cmd_report(args: argparse.Namespace) -> None:
    from greenr.evaluation import report

    print(f"wrote {report.write_report(args.base, args.out, plots=not args.no_plots)}")


def cmd_plots_template(args: argparse.Namespace) -> None:
    from greenr.evaluation import plots_page

    path = plots_page.write_template(force=args.force)
    print(f"dvc plots show/diff pages now render offline (plots.html_template = {path})")


def cmd_agreement(args: argparse.Namespace) -> None:
    from greenr.evaluation import agreement

    outcome = agreement.compare_runs(args.runs)
    print(outcome.headline())
    for line in outcome.summaries:
        print(line)
    for problem in outcome.problems:
        print(f"DISAGREE {problem}", file=sys.stderr)
    if outcome.agree:
        print(f"all {len(outcome.runs)} runs agree")
    raise SystemExit(0 if outcome.agree else 1)


def cmd_promote(args: argparse.Namespace) -> None:
    from greenr.evaluation import promote

    result = promote.run_gate(args.base, args.candidate)
    for check in result.checks:
        print(f"{'PASS' if check.passed else 'FAIL'}  {check.name}: {check.detail}")
    if not result.base_found:
        print(f"note: {result.base_rev} has no {EVALUATE_METRICS}; only the floors apply")
    elif result.split_change is not None:
        print("\n".join(result.split_change.lines()))
    if failed := result.failed:
        print(
            f"rejected: {len(failed)} of {len(result.checks)} checks failed ({', '.join(c.name for c in failed)})",
            file=sys.stderr,
        )
        raise SystemExit(1)
    print(f"promoted: the candidate passes all {len(result.checks)} checks against {result.base_rev}")
    if args.register:
        registered = promote.register()
        print(f"registered {registered.model} version {registered.version} as @{registered.alias}")


def _named_run(arg: str) -> tuple[str, Path]:
    """`NAME=DIR` or `DIR` (named after itself)."""
    name, sep, path = arg.partition("=")
    return (name, Path(path)) if sep else (arg, Path(arg))


# ---------------------------------------------------------------------------- services


def cmd_predict(args: argparse.Namespace) -> None:
    from greenr import predict

    summary = predict.score(
        args.source,
        args.out,
        model=args.model,
        backend=args.backend,
        precision=args.precision,
        threads=args.threads,
        batch_size=args.batch_size,
        workers=args.workers,
        shard=predict.Shard.parse(args.shard),
        progress=not args.no_progress,
    )
    print(summary.line(args.out))


def cmd_serve(args: argparse.Namespace) -> None:
    from serve.__main__ import main as serve_main

    serve_main()


def cmd_mlflow_ui(args: argparse.Namespace) -> None:
    from greenr.ops import tracking

    cmd = tracking.ui_command(args.port)
    print(
        f"MLflow UI for {tracking.tracking_uri()} on http://127.0.0.1:{args.port} (Ctrl-C or SIGTERM stops it)",
        flush=True,
    )
    # Its own process group, stopped whole when this command is: `mlflow ui` alone would leave
    # its uvicorn workers, job runner and task consumers running.
    raise SystemExit(processes.run(cmd, env=scm.tool_env(), cwd=main_checkout()).returncode)


# ---------------------------------------------------------------------------- the parser


def _add_base(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", default="main", help="git revision to compare with (default: main)")


def _ingest_arguments(parser: argparse.ArgumentParser) -> None:
    from greenr.data.ingest import DEFAULT_COUNT

    parser.add_argument(
        "--source",
        default=None,
        help="a folder with one sub-folder per class, or an http(s) URL template with "
        "{class} and {index} (default: $DATA_SOURCE, else the public URL template)",
    )
    parser.add_argument("--dest", type=Path, default=None, help="the data folder (default: data/)")
    parser.add_argument(
        "--classes",
        default=None,
        help="comma-separated class folders to take (default: every class folder of a local source; "
        "the default classes for the default URL template)",
    )
    parser.add_argument(
        "--count", type=int, default=DEFAULT_COUNT, help="URL template only: indices per class, 0..COUNT-1"
    )
    parser.add_argument("--workers", type=int, default=8, help="parallel downloads or copies")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds per request")
    parser.add_argument("--retries", type=int, default=3, help="retries per file after the first try")
    parser.add_argument(
        "--refresh", action="store_true", help="URL template only: download files already present again and compare"
    )
    parser.add_argument("--prune", action="store_true", help="remove files in dest that the source lacks")
    parser.add_argument("--no-dvc-add", action="store_true", help="do not run `dvc add` afterwards")


def _grid_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    queue = sub.add_parser("queue", help="queue one experiment per combination of -S values")
    queue.add_argument(
        "-S",
        "--set-param",
        dest="sets",
        action="append",
        required=True,
        metavar="KEY=V1,V2",
        help="as `dvc exp run -S` (comma-separated = grid)",
    )
    queue.add_argument("--name", help="experiment name (single experiments only)")
    run = sub.add_parser("run", help="run everything queued (`dvc exp run --run-all`)")
    run.add_argument("--jobs", type=int, default=1, help="parallel experiments (default 1: CPU-bound)")
    for name, text in (
        ("show", "one table of the experiments on BASE, best first"),
        ("best", "print (and --apply) the best experiment on BASE"),
    ):
        cmd = sub.add_parser(name, help=text)
        _add_base(cmd)
        cmd.add_argument(
            "--metric", default="accuracy", help=f"key in {EVALUATE_METRICS} to sort by (default: accuracy)"
        )
        if name == "show":
            cmd.add_argument("--md", action="store_true", help="Markdown table (for a PR)")
        else:
            cmd.add_argument("--apply", action="store_true", help="`dvc exp apply` it to the workspace")


def _predict_arguments(parser: argparse.ArgumentParser) -> None:
    from greenr.backends.loading import BACKEND_CHOICES, PRECISION_CHOICES
    from greenr.paths import ONNX_MODEL_PATH

    parser.add_argument("source", help="a folder of images (searched recursively), one image, or s3://BUCKET/PREFIX")
    parser.add_argument(
        "--out", default="predictions.csv", help="CSV to write, or s3://BUCKET/KEY.csv; rows already in it are skipped"
    )
    parser.add_argument(
        "--model", default=None, help=f"model file: an ONNX export or a checkpoint (default: {ONNX_MODEL_PATH}, pulled)"
    )
    parser.add_argument("--backend", default="auto", choices=list(BACKEND_CHOICES))
    parser.add_argument("--precision", default="auto", choices=list(PRECISION_CHOICES))
    parser.add_argument("--threads", type=int, default=0, help="inference threads (default: every core available)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="threads decoding (default: cores); reads run ahead in threads of their own",
    )
    parser.add_argument("--shard", default="0/1", metavar="I/N", help="score only shard I of N (0-based)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="greenr", description=__doc__.split("\n")[0])
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="main job: object store, data, dvc repro, dvc push, test metrics")
    run.add_argument("--force", action="store_true", help="rerun every stage (dvc repro --force)")
    run.set_defaults(func=cmd_run)

    ingest = sub.add_parser("ingest", help="fill data/ from DATA_SOURCE or the public URL template, then dvc add")
    _ingest_arguments(ingest)
    ingest.set_defaults(func=cmd_ingest)

    store = sub.add_parser("store", help="the local MinIO-compatible object store (SeaweedFS)")
    store.add_argument("action", choices=["start", "stop", "status", "check"])
    store.add_argument(
        "--foreground", action="store_true", help="start: run in this terminal until Ctrl-C or SIGTERM stops it"
    )
    store.set_defaults(func=cmd_store)
    for name in ("push", "pull"):
        transfer = sub.add_parser(name, help=f"dvc {name}, checking the object store first")
        transfer.add_argument("targets", nargs="*")
        transfer.set_defaults(func=cmd_transfer)

    inbox = sub.add_parser("inbox", help="feedback and uncertain inputs: status, label, accept into data/")
    inbox_sub = inbox.add_subparsers(dest="action", required=True)
    status = inbox_sub.add_parser("status", help="what waits in the inbox (the store's, and .state/inbox)")
    status.add_argument("--items", action="store_true", help="list every pending item")
    status.add_argument("--json", action="store_true", help="machine-readable counts")
    label = inbox_sub.add_parser("label", help="give a pending item its label (a reviewer's decision)")
    label.add_argument("item", help="the item's SHA-256, or its first 6+ hex digits")
    label.add_argument("label", help="the class: a class folder of data/")
    label.add_argument(
        "--new-class", action="store_true", help="the label may be a class data/ does not have yet (accept adds it)"
    )
    accept = inbox_sub.add_parser(
        "accept",
        help="trusted items into data/<class>/, dvc add data, dvc push, then mark them accepted "
        "(trusted: a reviewer's label, or FEEDBACK_MIN_AGREEING agreeing votes and none against)",
    )
    accept.add_argument(
        "--new-class",
        action="append",
        metavar="NAME",
        help="accept items labeled NAME though data/ has no such class yet: creates data/NAME/ (repeatable)",
    )
    for command in (status, accept):
        command.add_argument(
            "--trust-feedback",
            action="store_true",
            help="one vote is enough (no reviewer, no agreeing votes): only for feedback from trusted clients",
        )
        command.add_argument(
            "--min-agreeing",
            type=int,
            default=None,
            metavar="N",
            help="agreeing votes that make a label trusted (default: FEEDBACK_MIN_AGREEING, else 3)",
        )
    inbox.set_defaults(func=cmd_inbox)

    params = sub.add_parser("params", help="validate params.yaml")
    params.add_argument("action", choices=["check"])
    params.set_defaults(func=cmd_params)
    metrics = sub.add_parser("metrics", help="print the test metrics")
    metrics.set_defaults(func=cmd_metrics)

    grid = sub.add_parser("grid", help="experiment grids with dvc exp: queue, run, show, best")
    _grid_arguments(grid)
    grid.set_defaults(func=cmd_grid)
    cv = sub.add_parser("cv", help="compare settings by stratified k-fold cross-validation (train + val images)")
    cv.add_argument(
        "-S",
        "--set-param",
        dest="sets",
        action="append",
        metavar="KEY=V1,V2",
        help="model.* or train.* override, as `dvc exp run -S` (comma-separated = one setting per value)",
    )
    cv.add_argument("--folds", type=int, default=5, help="number of folds (default 5)")
    cv.add_argument("--seed", type=int, default=42, help="seed of the fold assignment (default 42)")
    cv.add_argument("--threads", type=int, default=0, help="torch threads (default: one per core)")
    cv.add_argument(
        "--out", type=Path, default=Path("reports/cv/cv"), help="writes OUT.json and OUT.md (default reports/cv/cv)"
    )
    cv.set_defaults(func=cmd_cv)
    report = sub.add_parser("report", help="Markdown PR report: metrics/params diffs, intervals, plots")
    _add_base(report)
    report.add_argument("--out", type=Path, default=Path("reports/pr.md"))
    report.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    report.set_defaults(func=cmd_report)
    plots = sub.add_parser(
        "plots-template", help="make `dvc plots show/diff` pages render offline (Vega inline, from npm)"
    )
    plots.add_argument("--force", action="store_true", help="download the scripts again")
    plots.set_defaults(func=cmd_plots_template)
    promote = sub.add_parser("promote", help="promotion gate: exit 0 promote, 1 rejected (says why)")
    _add_base(promote)
    promote.add_argument(
        "--candidate", type=Path, default=None, help=f"candidate metrics file (default: {EVALUATE_METRICS})"
    )
    promote.add_argument(
        "--register", action="store_true", help="when promoted, register the model in MLflow with the alias"
    )
    promote.set_defaults(func=cmd_promote)

    predict = sub.add_parser(
        "predict", help="batch scoring of a folder or s3://bucket/prefix into a CSV (resumable, shardable)"
    )
    _predict_arguments(predict)
    predict.set_defaults(func=cmd_predict)

    agree = sub.add_parser(
        "agreement", help="do runs (other Pythons, machines) agree: split, labels, metrics in the interval"
    )
    agree.add_argument(
        "runs",
        nargs="+",
        type=_named_run,
        metavar="[NAME=]DIR",
        help="checkouts after `greenr run`; the first is the reference",
    )
    agree.set_defaults(func=cmd_agreement)

    serve = sub.add_parser("serve", help="the prediction server (settings from the environment; see README)")
    serve.set_defaults(func=cmd_serve)
    ui = sub.add_parser("mlflow-ui", help="serve the MLflow UI on 127.0.0.1")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(func=cmd_mlflow_ui)
    return top


@exits_cleanly
def main(argv: list[str] | None = None) -> None:
    setup_logging()
    # SIGTERM and SIGHUP unwind like Ctrl-C: children (dvc and its stage, the MLflow server) are
    # stopped with their whole process group, and a local object store this command started too.
    processes.raise_on_stop_signals()
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    args.func(args)


if __name__ == "__main__":
    main()
