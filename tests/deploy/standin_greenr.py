"""Stand-in for the `greenr` CLI (pull, ingest, push) used by the Airflow end-to-end test until
greenr/cli.py is merged; same names and meaning, implemented with plain dvc.

    standin_greenr.py pull                 dvc pull (fails when the remote has no data)
    standin_greenr.py ingest --source DIR  copy DIR/<class>/* into data/, then dvc add data
    standin_greenr.py push                 dvc push
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys


def dvc(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "dvc", *args], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="greenr")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("pull")
    ingest = sub.add_parser("ingest")
    ingest.add_argument("--source", default=os.environ.get("DATA_SOURCE"))
    sub.add_parser("push")
    args = parser.parse_args()
    try:
        if args.command == "pull":
            dvc("pull", "data.dvc")
        elif args.command == "ingest":
            if not args.source:
                sys.exit("error: no --source and DATA_SOURCE is not set")
            shutil.rmtree("data", ignore_errors=True)
            shutil.copytree(args.source, "data")
            dvc("add", "data")
        else:
            dvc("push")
    except subprocess.CalledProcessError as err:
        sys.exit(err.returncode)


if __name__ == "__main__":
    main()
