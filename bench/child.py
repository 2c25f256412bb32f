"""One measured operation in a fresh process, so that its peak RSS is its own.

    python3 bench/child.py RESULT.json [--profile OUT.txt] parse BOOTSTRAP
    python3 bench/child.py RESULT.json [--profile OUT.txt] dump BOOTSTRAP
    python3 bench/child.py RESULT.json [--profile OUT.txt] compact ARG...

``dump`` loads the bootstrap before the clock starts and times ``rafs.loader.dump_bootstrap`` of
it alone: parse + dump is what any rewrite of that bootstrap costs at least, apply's yardstick.
Imports happen before the clock starts, so ``seconds`` is the operation alone; the parent also
records the whole process's wall time. RESULT.json gets seconds, the exit code, the peak RSS and
the RSS the imports alone left (the floor every Python process here pays).
"""

from __future__ import annotations

import argparse
import importlib
import json
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path


COMMAND_MODULES = {
    "apply": ("nydus_compact.applier.run", "nydus_compact.applier.apply", "nydus_compact.planner.planfile"),
    "plan": ("nydus_compact.planner.pipeline",),
}


def _peak_rss_bytes() -> int:
    """This process's RSS high-water mark.

    ``ru_maxrss`` survives exec on Linux, so a child of a big parent would report the parent's
    peak; VmHWM belongs to the process's own address space."""
    try:
        with open("/proc/self/status") as fp:
            for line in fp:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _operation(kind: str, args: list[str]) -> Callable[[], int]:
    if kind == "parse":
        from nydus_compact.rafs.loader import load_bootstrap

        (path,) = args
        return lambda: load_bootstrap(path) and 0
    if kind == "dump":
        from nydus_compact.rafs.loader import dump_bootstrap, load_bootstrap

        (path,) = args
        bs = load_bootstrap(path)
        return lambda: dump_bootstrap(bs) and 0
    from nydus_compact.cli.main import main

    # The modules a command imports when it runs, as parse and dump import theirs above: the clock
    # then times the command's work, not the imports (start-up has its own benchmark).
    for name in COMMAND_MODULES.get(args[0] if args else "", ()):
        importlib.import_module(name)
    return lambda: main(args)


def _profiled(op: Callable[[], int], out: Path) -> Callable[[], int]:
    try:
        from pyinstrument import Profiler
    except ImportError:
        sys.exit("--profile needs pyinstrument (pip install pyinstrument); it is not a project dependency")

    def run() -> int:
        profiler = Profiler(interval=0.002)
        profiler.start()
        try:
            return op()
        finally:
            profiler.stop()
            out.write_text(profiler.output_text(unicode=False, color=False))

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("result", type=Path)
    parser.add_argument("--profile", type=Path, help="write a pyinstrument text profile here")
    parser.add_argument("kind", choices=("parse", "dump", "compact"))
    parser.add_argument("args", nargs=argparse.REMAINDER)
    ns = parser.parse_args(argv)
    op = _operation(ns.kind, ns.args)
    if ns.profile is not None:
        op = _profiled(op, ns.profile)
    floor = _peak_rss_bytes()
    start = time.perf_counter()
    rc = op()
    seconds = time.perf_counter() - start
    ns.result.write_text(json.dumps({"seconds": seconds, "rc": rc, "peak_rss": _peak_rss_bytes(), "import_rss": floor}))
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
