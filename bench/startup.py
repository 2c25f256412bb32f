"""Start-up time of `compact` against a minimal typer app (issue 11), in one run.

    python3 bench/startup.py [--reps N] [--quick] [--out results.json]

Measures, interleaved and ``--reps`` times each, the wall time of fresh processes:

* baseline: ``startup_baseline.py --help`` (a two-command typer app, same interpreter);
* help:     ``compact --help``;
* show:     ``compact show plans/sample.plan.yaml``;
* version:  ``compact --version``.

and prints each median with the ratio to the baseline's median and the 1-minute load average
(targets: help <= 1.5 x baseline, show <= 2 x baseline). ``compact`` runs as the console script
does (``nydus_compact.cli.main.run``) under this interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

from run import BenchError, timed

HERE = Path(__file__).resolve().parent
SAMPLE_PLAN = HERE.parent / "plans" / "sample.plan.yaml"
COMPACT = [sys.executable, "-c", "import sys; sys.argv[0] = 'compact'; from nydus_compact.cli.main import run; run()"]
TARGETS = {"help": 1.5, "show": 2.0}


def commands() -> dict[str, list[str]]:
    return {
        "baseline": [sys.executable, str(HERE / "startup_baseline.py"), "--help"],
        "help": [*COMPACT, "--help"],
        "show": [*COMPACT, "show", str(SAMPLE_PLAN)],
    }


def measure(reps: int) -> dict:
    cmds = commands()
    for cmd in cmds.values():  # warm the page cache and the bytecode caches
        timed(cmd)
    samples: dict[str, list[float]] = {name: [] for name in cmds}
    for _ in range(reps):
        for name, cmd in cmds.items():
            samples[name].append(timed(cmd))
    base = statistics.median(samples["baseline"])
    rows = {}
    for name, got in samples.items():
        med = statistics.median(got)
        rows[name] = {"median": med, "min": min(got), "max": max(got), "ratio": med / base, "samples": got}
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=15, help="processes per command [default: 15]")
    parser.add_argument("--quick", action="store_true", help="3 reps: a smoke run")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    reps = 3 if args.quick else args.reps
    if reps < 1:
        parser.error("--reps must be at least 1")
    rows = measure(reps)
    load1 = os.getloadavg()[0]
    print(f"{'command':<10} {'median s':>9} {'min s':>7} {'ratio':>6}  target")
    for name, r in rows.items():
        target = TARGETS.get(name)
        verdict = "" if target is None else f"<= {target} {'met' if r['ratio'] <= target else 'NOT met'}"
        print(f"{name:<10} {r['median']:>9.3f} {r['min']:>7.3f} {r['ratio']:>6.2f}  {verdict}")
    print(f"ratios against the baseline's median over {reps} reps; load average (1 min) {load1:.2f}, {os.cpu_count()} cpus")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"reps": reps, "load1": load1, "results": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except BenchError as exc:
        sys.exit(f"startup: {exc}")
