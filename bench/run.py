"""The compactor benchmark (issue 6): plan at parse speed, apply at disk speed.

    python3 bench/run.py [--quick] [--size small|full] [--reps N] [--out results.json]

For each synthetic image (bench/images.py: "bulk" ~1 GiB in 72 blobs, "many" >= 1M chunk
occurrences over 240 blobs; RAFS v5 and v6), in the same run and ``--reps`` times each:

* parse: ``rafs.loader.load_bootstrap`` alone, in a fresh process;
* dump:  ``rafs.loader.dump_bootstrap`` of the loaded bootstrap (the load is not timed);
* plan:  ``compact plan`` (index into a fresh SQLite store, decide, write the YAML);
* apply: ``compact apply`` of that plan into an empty directory, from a copy of the plan's store;
* cp:    ``cp --reflink=never`` of a file holding exactly as many bytes as apply wrote, plus fsync
         (apply fsyncs what it writes), on the same disk.

Every operation runs in its own process (bench/child.py), which reports the operation's wall
time without interpreter start-up and imports, and its peak RSS. Inputs are read once before each
timed step so both sides of a ratio start from a warm page cache. Range requests come from the
apply run's steps in the store, chunks copied from the plan's groups.

Images are cached under ``--cache-dir`` (default: $TMPDIR/nydus-compact-bench), keyed by their
parameters; ``--quick`` uses tiny ones (a CI smoke run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from images import Image, Shape, cached_image, shapes

from nydus_compact.planner.planfile import load_plan
from nydus_compact.store.db import open_store
from nydus_compact.store.runs import completed_steps, find_run

CHILD = Path(__file__).with_name("child.py")
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "nydus-compact-bench"
READ_BLOCK = 1 << 20
MB = 1e6

# Targets of issue 6.
APPLY_VS_CP_MAX = 1.15
PLAN_VS_PARSE_MAX = 3.0
PLAN_RSS_MAX = 300 * MB
PLAN_RSS_AT_OCCURRENCES = 1_000_000
# Targets of issue 15, at >= PLAN_RSS_AT_OCCURRENCES too: apply's per-image work (load, re-validate,
# rewrite the bootstrap) near what reading and writing that bootstrap costs anyway.
APPLY_VS_PARSE_DUMP_MAX = 1.5
APPLY_RSS_MAX = 300 * MB


class BenchError(Exception):
    pass


def timed(cmd: list[str]) -> float:
    """Wall time of a whole process (start-up included); a failed command is a BenchError."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(map(str, cmd))} failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return seconds


@dataclass
class Sample:
    seconds: float  # the operation, inside its process
    process_seconds: float  # the whole process, as the parent saw it
    peak_rss: int
    import_rss: int


def run_child(kind: str, args: list[str], work: Path, profile: Path | None = None) -> Sample:
    result = work / "child.json"
    result.unlink(missing_ok=True)
    cmd = [sys.executable, str(CHILD), str(result)]
    if profile is not None:
        cmd += ["--profile", str(profile)]
    start = time.perf_counter()
    proc = subprocess.run(cmd + [kind, *args], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0 or not result.is_file():
        raise BenchError(f"{kind} {' '.join(args)} failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")
    out = json.loads(result.read_text())
    return Sample(out["seconds"], wall, out["peak_rss"], out["import_rss"])


def warm(paths: list[Path]) -> None:
    """Read files once so that the timed step finds them in the page cache."""
    buf = bytearray(READ_BLOCK)
    for path in paths:
        with open(path, "rb", buffering=0) as fp:
            while fp.readinto(buf):
                pass


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def timed_cp(src: Path, dst: Path) -> float:
    dst.unlink(missing_ok=True)
    start = time.perf_counter()
    subprocess.run(["cp", "--reflink=never", str(src), str(dst)], check=True)
    fsync_path(dst)
    fsync_path(dst.parent)
    return time.perf_counter() - start


def cp_source(image: Image, size: int) -> Path:
    """A file of exactly ``size`` bytes next to the image: its blobs' bytes back to back."""
    path = image.dir / f"cp-src-{size}.bin"
    if path.is_file() and path.stat().st_size == size:
        return path
    tmp = path.with_suffix(".tmp")
    left = size
    with open(tmp, "wb") as out:
        while left:
            for blob in sorted(image.blobs_dir.iterdir()):
                with open(blob, "rb") as fp:
                    while left and (block := fp.read(min(READ_BLOCK, left))):
                        out.write(block)
                        left -= len(block)
                if not left:
                    break
    os.replace(tmp, path)
    return path


def stats(values: list[float]) -> dict:
    med = statistics.median(values)
    return {
        "median": med,
        "min": min(values),
        "max": max(values),
        "spread_pct": (max(values) - min(values)) / med * 100 if med else 0.0,
        "samples": values,
    }


def apply_figures(plan_path: Path, state: Path) -> dict:
    """Coalescing (chunks copied per range request) and the copy phase, from the plan and the
    checkpoints of the last apply run."""
    plan, _ = load_plan(plan_path)
    chunks = sum(g.chunk_count for g in plan.groups)
    planned = sum(g.read_requests for g in plan.groups)
    with open_store(state) as store:
        run = find_run(store, plan.digest)
        if run is None:
            raise BenchError(f"{state}: no apply run of the plan")
        steps = [s for key, s in completed_steps(store, run.id).items() if key.startswith("blob:")]
    issued = sum(s.requests for s in steps)
    # Blob steps are all recorded as running before the first copy starts, then finish in turn.
    copy = (
        max(datetime.fromisoformat(s.finished) for s in steps) - min(datetime.fromisoformat(s.started) for s in steps)
        if steps else timedelta(0)
    )
    return {
        "chunks_copied": chunks,
        "planned_ranges": planned,
        "requests": issued,
        "chunks_per_request": chunks / issued if issued else None,
        "blobs_before": plan.summary.blobs_before,
        "blobs_after": plan.summary.blobs_after,
        "new_blobs": plan.summary.new_blobs,
        "bytes_to_read": plan.summary.bytes_to_read,
        "blob_bytes_written": sum(s.size or 0 for s in steps),
        "copy_seconds": copy.total_seconds(),
    }


def measure(image: Image, reps: int, work: Path, profile_dir: Path | None) -> dict:
    """Parse, plan, apply and cp ``reps`` times, interleaved, and the figures derived from them."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    boot, blobs = image.bootstrap, sorted(image.blobs_dir.iterdir())
    plan_yaml, plan_state, apply_state = work / "plan.yaml", work / "plan.state.sqlite", work / "apply.state.sqlite"
    out_dir, new_boot, cp_dst = work / "out", work / "new.boot", work / "cp-dst.bin"
    plan_args = ["plan", str(boot), "--blobs-dir", str(image.blobs_dir), "-o", str(plan_yaml),
                 "--state", str(plan_state), "-O", str(new_boot), *image.shape.plan_flags()]
    apply_args = ["apply", str(plan_yaml), "--blobs-dir", str(out_dir), "-O", str(new_boot),
                  "--state", str(apply_state)]

    def fresh_apply() -> None:
        shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.mkdir()
        new_boot.unlink(missing_ok=True)
        shutil.copyfile(plan_state, apply_state)
        warm([boot, *blobs])

    samples: dict[str, list[Sample]] = {"parse": [], "dump": [], "plan": [], "apply": []}
    cp_times: list[float] = []
    written = 0
    for _ in range(reps):
        warm([boot])
        samples["parse"].append(run_child("parse", [str(boot)], work))
        samples["dump"].append(run_child("dump", [str(boot)], work))
        plan_state.unlink(missing_ok=True)
        samples["plan"].append(run_child("compact", plan_args, work))
        fresh_apply()
        samples["apply"].append(run_child("compact", apply_args, work))
        written = sum(p.stat().st_size for p in out_dir.iterdir()) + new_boot.stat().st_size
        src = cp_source(image, written)
        warm([src])
        cp_times.append(timed_cp(src, cp_dst))
        cp_dst.unlink()
    figures = apply_figures(plan_yaml, apply_state)
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
        stem = f"{image.shape.name}-v{image.version}"
        plan_state.unlink(missing_ok=True)
        run_child("compact", plan_args, work, profile_dir / f"{stem}-plan.txt")
        fresh_apply()
        run_child("compact", apply_args, work, profile_dir / f"{stem}-apply.txt")
    shutil.rmtree(work, ignore_errors=True)

    meta = image.meta
    row: dict = {"image": image.shape.name, "version": image.version, **meta, "bytes_written": written, **figures,
                 "load_1min": os.getloadavg()[0]}
    for kind, got in samples.items():
        row[kind] = {
            "seconds": stats([s.seconds for s in got]),
            "process_seconds": stats([s.process_seconds for s in got]),
            "peak_rss": max(s.peak_rss for s in got),
            "import_rss": max(s.import_rss for s in got),
        }
    row["cp"] = {"seconds": stats(cp_times)}
    plan_s, parse_s = row["plan"]["seconds"]["median"], row["parse"]["seconds"]["median"]
    apply_s, cp_s = row["apply"]["seconds"]["median"], row["cp"]["seconds"]["median"]
    row["plan_vs_parse"] = plan_s / parse_s
    row["apply_vs_cp"] = apply_s / cp_s
    row["apply_vs_parse_dump"] = apply_s / (parse_s + row["dump"]["seconds"]["median"])
    # The copy phase alone against cp's rate: what is left once per-image work is set aside.
    row["copy_mb_per_s"] = row["blob_bytes_written"] / MB / row["copy_seconds"] if row["copy_seconds"] else None
    row["cp_mb_per_s"] = written / MB / cp_s
    row["targets"] = {
        "apply_vs_cp": row["apply_vs_cp"] <= APPLY_VS_CP_MAX,
        "plan_vs_parse": row["plan_vs_parse"] <= PLAN_VS_PARSE_MAX,
    }
    if meta["occurrences"] >= PLAN_RSS_AT_OCCURRENCES:
        row["targets"]["plan_rss"] = row["plan"]["peak_rss"] <= PLAN_RSS_MAX
        row["targets"]["apply_vs_parse_dump"] = row["apply_vs_parse_dump"] <= APPLY_VS_PARSE_DUMP_MAX
        row["targets"]["apply_rss"] = row["apply"]["peak_rss"] <= APPLY_RSS_MAX
    return row


def _t(st: dict) -> str:
    return f"{st['median']:.2f}±{st['spread_pct'] / 2:.0f}%"


def table(rows: list[dict]) -> str:
    head = (
        f"{'image':<12} {'v':>1} {'occur':>8} {'blobs':>8} {'parse s':>10} {'dump s':>10} {'plan s':>10} {'pl/pa':>5} "
        f"{'plan MB':>7} {'apply s':>10} {'ap/pd':>5} {'cp s':>10} {'ap/cp':>5} {'copy s':>6} {'apl MB':>6} {'wrote MB':>8} "
        f"{'chunks':>7} {'reqs':>6} {'ch/req':>6} {'load':>5}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        ratio = r["chunks_per_request"]
        lines.append(
            f"{r['image']:<12} {r['version']:>1} {r['occurrences']:>8} {r['blobs_before']:>3}→{r['blobs_after']:<4} "
            f"{_t(r['parse']['seconds']):>10} {_t(r['dump']['seconds']):>10} {_t(r['plan']['seconds']):>10} "
            f"{r['plan_vs_parse']:>5.2f} {r['plan']['peak_rss'] / MB:>7.0f} {_t(r['apply']['seconds']):>10} "
            f"{r['apply_vs_parse_dump']:>5.2f} {_t(r['cp']['seconds']):>10} "
            f"{r['apply_vs_cp']:>5.2f} {r['copy_seconds']:>6.2f} {r['apply']['peak_rss'] / MB:>6.0f} "
            f"{r['bytes_written'] / MB:>8.1f} "
            f"{r['chunks_copied']:>7} {r['requests']:>6} {(f'{ratio:.1f}' if ratio else '-'):>6} {r['load_1min']:>5.2f}"
        )
    lines.append(
        f"times: median±half the spread over reps, in-process (no interpreter start-up); copy s: apply's blob-copy "
        f"phase (last rep, from its checkpoints); load: 1-minute load average after the image's runs; ap/pd: apply / (parse + dump); MB = 10^6 bytes. "
        f"targets: ap/cp <= {APPLY_VS_CP_MAX}, pl/pa <= {PLAN_VS_PARSE_MAX}; at >= 1M occurrences "
        f"plan RSS <= {PLAN_RSS_MAX / MB:.0f} MB, apply RSS <= {APPLY_RSS_MAX / MB:.0f} MB, "
        f"ap/pd <= {APPLY_VS_PARSE_DUMP_MAX}"
    )
    return "\n".join(lines)


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny images: a smoke run in seconds")
    parser.add_argument("--size", choices=("small", "full"), action="append",
                        help="image size (repeatable, to see how figures grow) [default: full]")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of every measurement [default: 3]")
    parser.add_argument("--out", type=Path, default=Path("bench/results/results.json"), help="JSON result file")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="where generated images are kept")
    parser.add_argument("--version", type=int, choices=(5, 6), action="append", help="only this RAFS version")
    parser.add_argument("--image", choices=("bulk", "many"), action="append", help="only this image")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="also run plan and apply once under pyinstrument, text profiles into DIR")
    parser.add_argument("--s3", action="store_true",
                        help="also the s3 case: apply's copy phase from a loopback moto S3 server against localfs")
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    if args.quick and args.size:
        parser.error("--quick and --size are exclusive")
    sizes = ["quick"] if args.quick else args.size or ["full"]

    rows = [_one(shape, version, args) for shape, version in _selected(sizes, args)]
    print(table(rows))
    doc = {"machine": machine(), "sizes": sizes, "reps": args.reps, "results": rows}
    if args.s3:
        doc["s3"] = _s3_rows(sizes, args)
    print(f"load average (1, 5, 15 min) at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    print(f"results written to {args.out}")
    return 0


def _s3_rows(sizes: list[str], args: argparse.Namespace) -> list[dict]:
    from s3_case import MotoServer, measure_s3
    from s3_case import table as s3_table

    rows = []
    srv = MotoServer().start()
    try:
        for shape, version in _selected(sizes, args):
            image, _ = cached_image(shape, version, args.cache_dir)
            rows.append(measure_s3(image, args.reps, args.cache_dir / "work-s3", srv, run_child))
    finally:
        srv.stop()
    print(s3_table(rows))
    return rows


def _selected(sizes: list[str], args: argparse.Namespace) -> list[tuple[Shape, int]]:
    return [
        (shape, version)
        for size in sizes
        for shape in shapes(size)
        if not args.image or shape.name.split("-")[0] in args.image
        for version in args.version or (5, 6)
    ]


def _one(shape: Shape, version: int, args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    image, generated = cached_image(shape, version, args.cache_dir)
    if generated:
        print(f"generated {image.dir} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    row = measure(image, args.reps, args.cache_dir / "work", args.profile)
    print(f"measured {shape.name} v{version}: plan/parse {row['plan_vs_parse']:.2f}, apply/cp {row['apply_vs_cp']:.2f}, "
          f"apply/(parse+dump) {row['apply_vs_parse_dump']:.2f}, load {row['load_1min']:.2f}", file=sys.stderr)
    return row


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except BenchError as exc:
        sys.exit(f"bench: {exc}")
