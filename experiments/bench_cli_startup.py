"""How long the commands that only read answer: `evomerge --help`, `--version` and `status RUN_DIR`.

Each command runs as a user runs it (a new `python -m evomerge` process, so every import is paid), REPEATS
times; the best time is the figure (the least disturbed by other load), the median is saved beside it.
`status` reads a finished run: RUN_DIR if given, else a small one made first with `evomerge run` (the
demo's config, 4 candidates, 8 examples per skill; over the tiny zoo shipped with the package). The
machine (CPU count, load average) is written with the figures: a loaded machine is slower at imports above
all.

    python experiments/bench_cli_startup.py [RUN_DIR] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results" / "bench_cli_startup.json"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def evomerge(*args: str) -> list[str]:
    return [sys.executable, "-m", "evomerge", *args]


def small_run(root: Path) -> Path:
    """A finished run of the demo's config at a small budget, in `root / 'run'`."""
    config = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    for task in config["tasks"].values():
        task["limit"] = 8
    config["budget"] = {"evaluations": 4}
    path = root / "small.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    run_dir = root / "run"
    subprocess.run(
        evomerge("run", str(path), "--run-dir", str(run_dir)), check=True, env=ENV, stdout=subprocess.DEVNULL
    )
    return run_dir


def seconds(command: list[str], repeats: int) -> dict[str, float]:
    """Best and median wall-clock seconds of `command` run `repeats` times (it must succeed)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, env=ENV, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return {"best": round(min(times), 3), "median": round(statistics.median(times), 3)}


def machine() -> dict[str, object]:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average_1_5_15_min": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", nargs="?", type=Path, help="a finished run (default: make a small one)")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each command (default 5)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.run_dir if args.run_dir is not None else small_run(Path(tmp))
        before = machine()
        commands = {
            "evomerge --help": evomerge("--help"),
            "evomerge --version": evomerge("--version"),
            "evomerge status RUN_DIR": evomerge("status", str(run_dir)),
        }
        figures = {}
        for name, command in commands.items():
            figures[name] = seconds(command, args.repeats)
            best, median = figures[name]["best"], figures[name]["median"]
            print(f"{name:26} best {best:.3f} s, median {median:.3f} s", flush=True)
    result = {
        "repeats": args.repeats,
        "run": "given" if args.run_dir is not None else "demo config, 4 candidates, 8 examples per skill",
        "seconds": figures,
        "machine": {**before, "load_average_after": [round(x, 2) for x in os.getloadavg()]},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
