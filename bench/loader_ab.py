"""The training loader against its decode ceiling, this checkout against a baseline commit, interleaved.

    .venv/bin/python bench/loader_ab.py WORKSPACE --baseline HEAD~1 [--rounds 3]

WORKSPACE is a workspace with prepared shards (e.g. `bench/scale.py 100000 --until prepare --keep
DIR`, then DIR/workspace). The baseline is checked out in a temporary git worktree; each round runs
`bench.scale.shard_decoding` of the baseline, then of this checkout, each in its own process (so
each imports its own greenr): the training loader reading every prepared image in batches of 64,
and PIL decoding the same shard members in one process per core. It prints both, their share, the
medians, and the load average before and after: quote only a run that started on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.scale import load_average, print_machine

MEASURE = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import greenr.data.loader
assert greenr.data.loader.__file__.startswith(sys.argv[1]), greenr.data.loader.__file__
from bench.scale import shard_decoding
loader, ceiling, images = shard_decoding(Path(sys.argv[2]), int(sys.argv[3]))
print(json.dumps({"loader": loader, "ceiling": ceiling, "images": images}))
"""


def measure(checkout: Path, workspace: Path, workers: int) -> dict[str, float]:
    """One run of shard_decoding with `checkout`'s code, in a fresh process."""
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(checkout), str(workspace), str(workers)],
        cwd=checkout,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workspace", type=Path, help="a workspace with prepared shards")
    parser.add_argument("--baseline", required=True, help="the git revision to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    from greenr.hardware import available_cpus

    print_machine()
    workers = available_cpus()
    with tempfile.TemporaryDirectory(prefix="greenr-loader-ab-", dir=REPO / ".state") as temp:
        baseline = Path(temp) / "baseline"
        subprocess.run(["git", "worktree", "add", "-q", "--detach", str(baseline), args.baseline], cwd=REPO, check=True)
        try:
            runs: dict[str, list[dict[str, float]]] = {args.baseline: [], "this checkout": []}
            for round_number in range(1, args.rounds + 1):
                for name, checkout in ((args.baseline, baseline), ("this checkout", REPO)):
                    run = measure(checkout, args.workspace.resolve(), workers)
                    runs[name].append(run)
                    print(
                        f"round {round_number} {name:<14} loader {run['loader']:6.0f} images/s, ceiling "
                        f"{run['ceiling']:6.0f} images/s, share {run['loader'] / run['ceiling']:.2f} "
                        f"({run['images']:.0f} images)",
                        flush=True,
                    )
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(baseline)], cwd=REPO, check=False)
    print(f"load average after: {load_average()}")
    for name, rows in runs.items():
        shares = [r["loader"] / r["ceiling"] for r in rows]
        print(
            f"{name:<14} median loader {statistics.median(r['loader'] for r in rows):.0f} images/s, median "
            f"ceiling {statistics.median(r['ceiling'] for r in rows):.0f}, median share "
            f"{statistics.median(shares):.2f} ({min(shares):.2f}-{max(shares):.2f})"
        )


if __name__ == "__main__":
    main()
