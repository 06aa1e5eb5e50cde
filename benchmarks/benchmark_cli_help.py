"""How long each command takes to answer `--help` (a fresh Python process each time, as a user types it).

Every command parses its flags before it imports torch, Transformers or `datasets` (`training/cli_parsers.py`),
so `--help` and a mistyped flag answer at once. Wall time of `--runs` runs per command, the median and the
slowest reported; the bare interpreter's start-up is measured the same way for reference.

    python benchmarks/benchmark_cli_help.py              # prints a table, writes docs/cli_help.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {
    "python -c pass (interpreter start-up)": ["-c", "pass"],
    "centerclip --help": ["-m", "search", "--help"],
    "centerclip index --help": ["-m", "search", "index", "--help"],
    "train.py --help": ["training/train.py", "--help"],
    "evaluate.py --help": ["training/evaluate.py", "--help"],
    "python -m training.prepare_frames --help": ["-m", "training.prepare_frames", "--help"],
    "python -m training.publish --help": ["-m", "training.publish", "--help"],
}


def time_command(argv: list[str], runs: int) -> list[float]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, *argv], cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    parser.add_argument("--runs", type=int, default=5, help="runs per command")
    parser.add_argument("--output", default=str(REPO / "docs" / "cli_help.json"), help="JSON results")
    args = parser.parse_args(argv)
    results = {}
    print(f"{'command':<45} {'median s':>9} {'max s':>7}")
    for name, command in COMMANDS.items():
        times = time_command(command, args.runs)
        results[name] = {"median_s": round(statistics.median(times), 3), "max_s": round(max(times), 3)}
        print(f"{name:<45} {results[name]['median_s']:>9.2f} {results[name]['max_s']:>7.2f}")
    report = {"runs": args.runs, "python": platform.python_version(), "cpu_count": os.cpu_count(),
              "load_average_1min": round(os.getloadavg()[0], 2), "commands": results}  # fmt: skip
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.output} (1-minute load average {report['load_average_1min']})")
    return report


if __name__ == "__main__":
    main()
