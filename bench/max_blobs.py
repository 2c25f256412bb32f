"""Bytes rewritten to bring the benchmark's 240-blob image under N blobs: `--max-blobs N` against
the cheapest size-threshold configuration that reaches the same count (issue 16).

    python3 bench/max_blobs.py [--quick] [--size small|full] [--version 5|6] [--limit N ...]
                               [--cache-dir DIR] [--out results.json]

The image is bench/images.py's "many" (240 blobs: 100 kept, 60 sparse at 30 %, 60 tiny, 20
unused); `--size small` keeps the blob count and divides chunk counts by 8.

* max-blobs: R with no thresholds of its own (min_used_ratio 0, compact_blob_size 0,
  max_compact_size = the image's cap) plus `--max-blobs N`;
* thresholds: the cheapest configuration of compact_blob_size x max_compact_size (and, in a
  second search, x min_used_ratio) whose plan holds at most N blobs. The search covers every ratio and
  compact_blob_size breakpoint (each value that changes which blobs are rebuilt or are merge
  candidates) and max_compact_size in powers of two from the smallest used blob to the whole
  image (compact_blob_size by bisection, see ``threshold_search``). Each configuration runs the real policy (``planner.policy.decide``) on a one-chunk-per-blob
  digest of the image: R's decisions depend only on per-blob used bytes, chunk counts, sizes and
  features, so they equal the full image's (the I5 chunk cap does not bind: 262k chunks in all).
  The winner, and the max-blobs plan, are then laid out on the full image (``planner.layout``),
  whose ``bytes_to_write`` are the figures printed.

Rows per limit: max-blobs at the image's own cap (max_compact_size 100 MiB, /8 for small), with
the time of decide + the limit step; the cheapest configuration of size thresholds alone
(min_used_ratio 0), and of size thresholds with a ratio, each with its search time and with
max-blobs at that configuration's cap. ratio = threshold bytes / max-blobs bytes at the same cap
(how many times more the best threshold configuration rewrites).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from images import cached_image, shapes

from nydus_compact.planner.config import CompactConfig
from nydus_compact.planner.facts import Facts
from nydus_compact.planner.flags import Flags
from nydus_compact.planner.fleet import unite
from nydus_compact.planner.layout import layout
from nydus_compact.planner.max_blobs import limit_blobs
from nydus_compact.planner.policy import Decisions, decide, resolve
from nydus_compact.planner.vocab import KEPT_ACTIONS
from nydus_compact.rafs.loader import load_bootstrap
from nydus_compact.rafs.model import CHUNK_DTYPE

DEFAULT_CACHE = Path(tempfile.gettempdir()) / "nydus-compact-bench"
FLAGS = Flags.tool_default()


@dataclass
class Outcome:
    config: CompactConfig
    blobs: int
    bytes_written: int
    seconds: float = 0.0


def digest_of(facts: Facts, r_only: Decisions) -> Facts:
    """One chunk per referenced blob, of the blob's used bytes: what R's decisions depend on."""
    used = [d for d in r_only.blobs if d.used_chunks]
    rows = np.zeros(len(used), dtype=CHUNK_DTYPE)
    for k, d in enumerate(used):
        rows[k]["block_id"] = hashlib.sha256(d.blob_id.encode()).digest()
        rows[k]["blob_index"] = d.index
        rows[k]["compressed_size"] = rows[k]["uncompressed_size"] = d.used_bytes
    return Facts(facts.version, facts.blobs, rows)


def table_and_bytes(d: Decisions) -> tuple[int, int]:
    """Blobs in the new table and used bytes written into new blobs, from decisions alone."""
    if d.noop_reason is not None:
        return len(d.blobs), 0
    kept = sum(1 for b in d.blobs if b.action in KEPT_ACTIONS)
    return kept + len(d.groups), sum(b.used_bytes for b in d.blobs if b.group is not None)


def threshold_search(
    digest: Facts, limit: int, caps: list[int], ratios: list[int], sizes: list[int]
) -> CompactConfig | None:
    """The configuration rewriting the fewest bytes among those whose plan holds <= ``limit`` blobs.

    compact_blob_size admits blobs in size order, and R's greedy merge sees the newly admitted
    ones last (candidates are sorted by size, stably): each either joins the last group or stays
    alone. So, for a fixed ratio and cap, raising it never raises the count nor lowers the bytes,
    and the smallest value that reaches the limit is the cheapest: found by bisection.
    """
    best: tuple[int, CompactConfig] | None = None
    for ratio in ratios:
        for cap in caps:

            def plan(low: int) -> tuple[int, int, CompactConfig]:
                cfg = CompactConfig(min_used_ratio=ratio, compact_blob_size=low, max_compact_size=cap)
                return (*table_and_bytes(decide(digest, cfg, FLAGS)), cfg)

            lo, hi = 0, len(sizes) - 1
            if plan(sizes[hi])[0] > limit:
                continue
            while lo < hi:
                mid = (lo + hi) // 2
                if plan(sizes[mid])[0] <= limit:
                    hi = mid
                else:
                    lo = mid + 1
            _, written, cfg = plan(sizes[lo])
            if best is None or written < best[0]:
                best = (written, cfg)
    return best[1] if best else None


def measure(facts: Facts, res, cfg: CompactConfig) -> Outcome:
    start = time.perf_counter()
    d = decide(facts, cfg, FLAGS, res)
    if cfg.max_blobs is not None:
        d, _ = limit_blobs(d, cfg.max_blobs, cfg.max_compact_size)
    seconds = time.perf_counter() - start
    lay = layout(facts, d)
    return Outcome(cfg, len(lay.table), lay.bytes_to_write, seconds)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny image (30 blobs), limits 8 and 4: a smoke run")
    ap.add_argument("--size", choices=["small", "full"], default="small")
    ap.add_argument("--version", type=int, choices=[5, 6], default=6)
    ap.add_argument("--limit", type=int, action="append", help="blob-count limit (repeatable; default 64 and 32)")
    ap.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("results") / "max_blobs.json")
    args = ap.parse_args(argv)
    size = "quick" if args.quick else args.size
    limits = args.limit or ([8, 4] if args.quick else [64, 32])
    shape = next(s for s in shapes(size) if s.name.startswith("many"))

    image, generated = cached_image(shape, args.version, args.cache_dir)
    bs = load_bootstrap(image.bootstrap)
    sizes = {b.blob_id: (image.blobs_dir / b.blob_id).stat().st_size for b in bs.blobs}
    facts = unite([bs], [str(image.bootstrap)], sizes).facts
    del bs
    res = resolve(facts, FLAGS)
    plain = decide(facts, CompactConfig(compact_blob_size=0, max_compact_size=shape.max_compact_size), FLAGS, res)
    digest = digest_of(facts, plain)

    used = sorted(d.used_bytes for d in plain.blobs if d.used_chunks)
    ratio_points = sorted({0} | {d.ratio + 1 for d in plain.blobs if d.ratio is not None})
    size_points = sorted({0} | {b.compressed_size + 1 for b in facts.blobs} | {u + 1 for u in used})
    caps = []
    cap = 1 << max(0, used[0].bit_length() - 1)
    while cap < 2 * sum(used):
        caps.append(cap)
        cap *= 2

    load = os.getloadavg()[0]
    print(f"image {shape.name} v{args.version}: {len(facts.blobs)} blobs, {len(facts.chunks)} occurrences"
          f"{' (generated)' if generated else ''}; search: {len(ratio_points)} ratios x {len(size_points)} "
          f"compact_blob_size x {len(caps)} max_compact_size; load average {load:.2f}")  # fmt: skip
    print(f"{'N':>4} {'':<30} {'written MB':>11} {'blobs':>5} {'seconds':>8}  configuration")
    rows = []
    for limit in limits:
        ours = measure(facts, res, CompactConfig(compact_blob_size=0, max_compact_size=shape.max_compact_size, max_blobs=limit))
        row = {
            "limit": limit,
            "max_blobs": {"bytes_written": ours.bytes_written, "blobs": ours.blobs, "seconds": ours.seconds,
                          "max_compact_size": shape.max_compact_size},
        }  # fmt: skip
        print(f"{limit:>4} {'max-blobs':<30} {ours.bytes_written / 1e6:>11.3f} {ours.blobs:>5} {ours.seconds:>8.3f}"
              f"  max_compact_size {shape.max_compact_size}")  # fmt: skip
        for name, ratios in (("sizes", [0]), ("sizes_and_ratio", ratio_points)):
            start = time.perf_counter()
            best = threshold_search(digest, limit, caps, ratios, size_points)
            search_s = time.perf_counter() - start
            if best is None:
                print(f"{limit:>4} {'thresholds (' + name + ')':<30} no configuration reaches the count")
                row[name] = None
                continue
            theirs = measure(facts, res, best)
            # The limit at the winner's cap: it may then pack as that configuration does.
            same = measure(facts, res, CompactConfig(compact_blob_size=0, max_compact_size=best.max_compact_size, max_blobs=limit))
            ratio = theirs.bytes_written / same.bytes_written if same.bytes_written else None
            print(
                f"{limit:>4} {'thresholds (' + name + ')':<30} {theirs.bytes_written / 1e6:>11.3f} {theirs.blobs:>5} "
                f"{search_s:>8.1f}  min_used_ratio {best.min_used_ratio}, compact_blob_size {best.compact_blob_size}, "
                f"max_compact_size {best.max_compact_size}; max-blobs at that cap {same.bytes_written / 1e6:.3f} MB, "
                f"ratio {f'{ratio:.2f}' if ratio else '-'}"
            )
            row[name] = {
                "config": vars_of(best),
                "bytes_written": theirs.bytes_written,
                "blobs": theirs.blobs,
                "search_seconds": search_s,
                "max_blobs_same_cap": {"bytes_written": same.bytes_written, "blobs": same.blobs},
                "threshold_over_max_blobs": ratio,
            }
        rows.append(row)
    print(f"load average {os.getloadavg()[0]:.2f} (at start {load:.2f})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "image": shape.name,
        "version": args.version,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "load_average": load},
        "rows": rows,
    }
    args.out.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return 0


def vars_of(cfg: CompactConfig) -> dict:
    return {k: getattr(cfg, k) for k in ("min_used_ratio", "compact_blob_size", "max_compact_size")}


if __name__ == "__main__":
    sys.exit(main())
