"""Apply at the durable-copy limit (issue 15): `compact apply` against `cp` + `sync` of the same bytes.

    python3 bench/apply_speed.py [--quick] [--reps N] [--version 5|6] [--cache-dir DIR] [--out FILE]
                                 [--profile DIR] [--max-load L] [--load-wait S]

The image (bench/images.py ``merge_shape``): 128 blobs x 8 MiB of random data, 1 MiB uncompressed
chunks, sha256 digester, RAFS v5 and v6, planned so that every blob merges into 4 new blobs of
256 MiB (1 GiB read and written). ``--quick``: 16 blobs x 1 MiB into 4 (a smoke run).

Per version and ``--reps`` times, interleaved, each phase starting after ``sync`` with its inputs
in the page cache and (waiting up to ``--load-wait`` seconds) the 1-minute load average below
``--max-load``, which is printed beside every figure:

* apply:       `compact apply` (default flags: source verification on), a fresh process;
* apply-nv:    `compact apply --no-verify-sources`;
* cp+sync:     `cp` of the same source blob files into a fresh directory + `sync` of the copies
               (the durable copy of the same bytes: the baseline of the ratios);
* sha256:      hashlib sha256 of the source bytes, one thread, in this process (a floor);
* copy-floor:  apply's copy with nothing else, in this process: the sources read in 1 MiB pieces,
               each piece's sha256 (the chunk check) and the new blob's running sha256 (its id),
               written with O_DIRECT into 4 files and fsynced, on one thread per core;
* start-up:    `compact --help`, a fresh process (interpreter + imports, paid by every apply).

Apply and cp are timed as whole processes, as a user sees them. Targets: apply <= 1.5 x cp+sync,
apply-nv <= 1.3 x cp+sync.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import mmap
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from images import Image, cached_image, merge_shape
from run import BenchError, Sample, machine, run_child, stats, timed, warm

DEFAULT_CACHE = Path(tempfile.gettempdir()) / "nydus-compact-bench"
APPLY_MAX = 1.5  # with source verification, x cp+sync
APPLY_NV_MAX = 1.3  # without
READ_BLOCK = 1 << 20


def load1() -> float:
    return os.getloadavg()[0]


def settle(max_load: float, wait: float) -> float:
    """sync, then wait (at most ``wait`` seconds) for the 1-minute load to drop below ``max_load``."""
    subprocess.run(["sync"], check=True)
    deadline = time.monotonic() + wait
    while load1() >= max_load and time.monotonic() < deadline:
        time.sleep(1)
    return load1()


def sha256_seconds(paths: list[Path]) -> float:
    buf = bytearray(READ_BLOCK)
    view = memoryview(buf)
    start = time.perf_counter()
    for path in paths:
        h = hashlib.sha256()
        with open(path, "rb", buffering=0) as fp:
            while n := fp.readinto(buf):
                h.update(view[:n])
    return time.perf_counter() - start


def copy_floor(blobs: list[Path], out_dir: Path, groups: int) -> float:
    """Seconds of the copy apply does, with nothing else (no plan, no checks of the layout, no
    checkpoints): what remains of apply beyond it is overhead."""
    from nydus_compact.safeio.direct import DirectWriter

    per = -(-len(blobs) // groups)

    def one(k: int) -> str:
        piece = memoryview(mmap.mmap(-1, READ_BLOCK))
        blob_id = hashlib.sha256()
        out = DirectWriter(out_dir / f"floor-{k}")
        try:
            for path in blobs[k * per : (k + 1) * per]:
                with open(path, "rb", buffering=0) as fp:
                    while n := fp.readinto(piece):
                        hashlib.sha256(piece[:n]).digest()
                        blob_id.update(piece[:n])
                        out.write(piece[:n])
        except BaseException:
            out.abort()
            raise
        out.finish()
        return blob_id.hexdigest()

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(one, range(groups)))
    return time.perf_counter() - start


def measure(image: Image, args: argparse.Namespace) -> dict:
    work = args.cache_dir / "apply-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    blobs = sorted(p for p in image.blobs_dir.iterdir() if not p.name.startswith("."))
    plan_yaml, plan_state = work / "plan.yaml", work / "plan.state.sqlite"
    out_dir, new_boot, state, cp_dir = work / "out", work / "new.boot", work / "apply.state.sqlite", work / "cp"
    compact = [sys.executable, "-m", "nydus_compact"]
    subprocess.run(
        [*compact, "plan", str(image.bootstrap), "--blobs-dir", str(image.blobs_dir), "-o", str(plan_yaml),
         "--state", str(plan_state), "-O", str(new_boot), *image.shape.plan_flags()],
        check=True, capture_output=True,
    )
    apply_args = ["apply", str(plan_yaml), "--blobs-dir", str(out_dir), "-O", str(new_boot), "--state", str(state)]

    def fresh() -> None:
        for d in (out_dir, cp_dir):
            shutil.rmtree(d, ignore_errors=True)
        out_dir.mkdir()
        new_boot.unlink(missing_ok=True)
        shutil.copyfile(plan_state, state)

    def phase(run) -> tuple[float, float]:
        fresh()
        load = settle(args.max_load, args.load_wait)
        warm([image.bootstrap, *blobs])
        return run(), load

    written = [0]

    def apply(extra: list[str]) -> float:
        sample: Sample = run_child("compact", apply_args + extra, work)
        written[0] = sum(p.stat().st_size for p in out_dir.iterdir() if not p.name.startswith("."))
        return sample.process_seconds

    def cp_sync() -> float:
        cp_dir.mkdir()
        start = time.perf_counter()
        subprocess.run(["cp", "--reflink=never", *map(str, blobs), str(cp_dir)], check=True)
        subprocess.run(["sync", *map(str, sorted(cp_dir.iterdir()))], check=True)
        return time.perf_counter() - start

    phases = {
        "apply": lambda: apply([]),
        "apply-nv": lambda: apply(["--no-verify-sources"]),
        "cp+sync": cp_sync,
        "sha256": lambda: sha256_seconds(blobs),
        "copy-floor": lambda: copy_floor(blobs, out_dir, image.shape.groups),
        "start-up": lambda: timed([*compact, "--help"]),
    }
    samples: dict[str, list[float]] = {k: [] for k in phases}
    loads: dict[str, list[float]] = {k: [] for k in phases}
    for _ in range(args.reps):
        for name, run in phases.items():
            seconds, load = phase(run)
            samples[name].append(seconds)
            loads[name].append(load)
            print(f"  v{image.version} {name:<10} {seconds:7.3f} s  (load {load:.2f})", file=sys.stderr)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
        for name, extra in (("apply", []), ("apply-nv", ["--no-verify-sources"])):
            fresh()
            settle(args.max_load, args.load_wait)
            warm([image.bootstrap, *blobs])
            run_child("compact", apply_args + extra, work, args.profile / f"{image.shape.name}-v{image.version}-{name}.txt")
    shutil.rmtree(work, ignore_errors=True)

    row: dict = {"image": image.shape.name, "version": image.version, **image.meta, "new_blob_bytes": written[0]}
    for name in phases:
        row[name] = {"seconds": stats(samples[name]), "load": loads[name]}
    base = row["cp+sync"]["seconds"]["median"]
    row["apply_vs_cp"] = row["apply"]["seconds"]["median"] / base
    row["apply_nv_vs_cp"] = row["apply-nv"]["seconds"]["median"] / base
    row["verify_cost_s"] = row["apply"]["seconds"]["median"] - row["apply-nv"]["seconds"]["median"]
    row["targets"] = {"apply_vs_cp": row["apply_vs_cp"] <= APPLY_MAX, "apply_nv_vs_cp": row["apply_nv_vs_cp"] <= APPLY_NV_MAX}
    return row


def table(rows: list[dict]) -> str:
    head = (f"{'image':<12} {'v':>1} {'phase':<10} {'median s':>9} {'min s':>7} {'max s':>7} {'x cp+sync':>9} "
            f"{'load (1 min) at start':<24}")
    lines = [head, "-" * len(head)]
    for r in rows:
        base = r["cp+sync"]["seconds"]["median"]
        for name in ("apply", "apply-nv", "cp+sync", "sha256", "copy-floor", "start-up"):
            st = r[name]["seconds"]
            loads = " ".join(f"{x:.2f}" for x in r[name]["load"])
            lines.append(f"{r['image']:<12} {r['version']:>1} {name:<10} {st['median']:>9.3f} {st['min']:>7.3f} "
                         f"{st['max']:>7.3f} {st['median'] / base:>9.2f} {loads:<24}")
        lines.append(
            f"{'':<12} {'':>1} apply {r['apply_vs_cp']:.2f} x (target <= {APPLY_MAX}: "
            f"{'met' if r['targets']['apply_vs_cp'] else 'NOT met'}), --no-verify-sources {r['apply_nv_vs_cp']:.2f} x "
            f"(target <= {APPLY_NV_MAX}: {'met' if r['targets']['apply_nv_vs_cp'] else 'NOT met'}), "
            f"verification costs {r['verify_cost_s']:+.3f} s"
        )
    lines.append("apply, apply-nv, cp+sync and start-up are whole processes; figures count only at a load near 0.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="16 blobs x 1 MiB: a smoke run in seconds")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of every phase [default: 3]")
    parser.add_argument("--version", type=int, choices=(5, 6), action="append", help="only this RAFS version")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="where generated images are kept")
    parser.add_argument("--out", type=Path, default=Path("bench/results/apply_speed.json"), help="JSON result file")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="also run apply once per mode under pyinstrument, text profiles into DIR")
    parser.add_argument("--max-load", type=float, default=1.0, help="wait for the 1-minute load below this [1.0]")
    parser.add_argument("--load-wait", type=float, default=60, help="wait at most this long per phase, seconds [60]")
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    shape = merge_shape(args.quick)
    rows = []
    for version in args.version or (5, 6):
        start = time.perf_counter()
        image, generated = cached_image(shape, version, args.cache_dir)
        if generated:
            print(f"generated {image.dir} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        rows.append(measure(image, args))
    print(table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"machine": machine(), "reps": args.reps, "results": rows}
    args.out.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except BenchError as exc:
        sys.exit(f"bench: {exc}")
