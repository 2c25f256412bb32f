"""The registry benchmark (issue 12): `compact apply` of an image plan between two registries,
against `skopeo copy` of the same image between the same two registries.

    python3 bench/registry.py [--quick] [--reps N] [--scale S] [--cache-dir DIR] [--out results.json]

Two docker-registry processes on two loopback ports (A holds the source image, B receives).
Per repetition, interleaved, each into a *fresh* registry B (a new docker-registry process with
empty storage), so neither side can mount or skip a blob — skopeo's blob-info cache would
otherwise mount blobs from the repository of B that the previous repetition filled:

* skopeo: `skopeo copy docker://A/src:v1 docker://B/bench/skopeo:v1` (wall time of the process);
* apply:  `compact plan docker://A/src:v1 --target docker://B/bench/apply-N:v1` with a merge-everything
  config (untimed), then `compact apply` of that plan with default flags (wall time of the
  process: reading the used chunks from A, writing the merged blob, uploading it, bootstrap layer,
  config and manifest to B).

Merge-everything (every blob is a merge candidate, no size cap) makes apply move the image's
used bytes once, as skopeo moves every blob once. Target: apply <= 1.5 x skopeo (medians).
The source image is the bundled sample grown with --sample-scale, built by `compact mkimage
--output-image` and cached under --cache-dir.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the same docker-registry harness the tests use

from registry_server import REGISTRY_BIN, RegistryServer  # noqa: E402
from run import BenchError, timed  # noqa: E402

TARGET = 1.5
MERGE_ALL = ["--compact-blob-size", "1TiB", "--max-compact-size", "1TiB"]
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "nydus-compact-bench"


def compact(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "nydus_compact", *map(str, args)]


def source_image(cache: Path, scale: int) -> Path:
    layout = cache / f"registry-sample-x{scale}" / "layout"
    if not (layout / "index.json").is_file():
        shutil.rmtree(layout.parent, ignore_errors=True)
        layout.parent.mkdir(parents=True)
        timed(compact("mkimage", "--sample", "--sample-scale", scale, "-o", layout.parent / "files",
                    "--fs-version", "6", "--output-image", f"oci:{layout}:v1"))
    return layout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a tiny image and one repetition (smoke run)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 5, quick 1)")
    ap.add_argument("--scale", type=int, default=None, help="sample scale (default 48 ~ 85 MB of blobs, quick 1)")
    ap.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "registry.json")
    args = ap.parse_args()
    reps = args.reps or (1 if args.quick else 5)
    scale = args.scale or (1 if args.quick else 48)
    if REGISTRY_BIN is None or shutil.which("skopeo") is None:
        raise SystemExit("docker-registry and skopeo are needed (apt-get install docker-registry skopeo)")
    layout = source_image(args.cache_dir, scale)
    work = Path(tempfile.mkdtemp(prefix="compact-bench-registry-"))
    a = RegistryServer(work / "registry-a").start()
    try:
        source = f"docker://{a.host}/bench/src:v1"
        timed(["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{layout}:v1", source])
        blob_bytes = sum(p.stat().st_size for p in (layout / "blobs" / "sha256").iterdir())
        samples: dict[str, list[float]] = {"skopeo": [], "apply": []}
        moved = 0
        for rep in range(reps):
            # A new registry B every repetition: skopeo's blob-info cache remembers where it pushed a
            # blob before and would otherwise mount it from the previous repetition's repository.
            b = RegistryServer(work / f"registry-b-{rep}").start()
            try:
                samples["skopeo"].append(timed(["skopeo", "copy", "-q", "--src-tls-verify=false",
                                              "--dest-tls-verify=false", source, f"docker://{b.host}/bench/skopeo:v1"]))
            finally:
                b.stop()
            b = RegistryServer(work / f"registry-b-{rep}-apply").start()
            root = work / f"apply-{rep}"
            root.mkdir()
            timed(compact("plan", source, "--target", f"docker://{b.host}/bench/apply-{rep}:v1", *MERGE_ALL,
                        "-o", root / "plan.yaml"))
            try:
                samples["apply"].append(timed(compact("apply", root / "plan.yaml", "-J", root / "out.json")))
            finally:
                b.stop()
            doc = json.loads((root / "out.json").read_text())
            moved = sum(x["size"] for x in doc["published"][0]["blobs"] if x["status"] != "present")
    finally:
        a.stop()
        shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in samples.items()}
    ratio = med["apply"] / med["skopeo"]
    load = os.getloadavg()[0]
    print(f"registry benchmark: sample x{scale}, {blob_bytes / 1e6:.1f} MB of blobs in the source image, "
          f"apply moved {moved / 1e6:.1f} MB, {reps} rep(s), median wall times")
    print(f"  skopeo copy A->B     {med['skopeo']:8.2f} s   (baseline)")
    print(f"  compact apply A->B   {med['apply']:8.2f} s   ratio {ratio:.2f} x (target <= {TARGET} x: "
          f"{'met' if ratio <= TARGET else 'NOT met'})")
    print(f"  load average (1 min) {load:.2f} on {os.cpu_count()} cpus")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "scale": scale, "reps": reps, "source_blob_bytes": blob_bytes, "apply_moved_bytes": moved,
        "samples": samples, "median": med, "ratio": ratio, "target": TARGET, "load_average_1min": load,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        sys.exit(f"registry bench: {exc}")
