"""The s3 case of the benchmark (issue 14): apply's copy phase from a loopback S3 server against localfs.

``python3 bench/run.py --s3 ...`` starts moto's S3 server as a subprocess on 127.0.0.1 (as the
tests do: it must not share our GIL), puts each image's blobs in a bucket, and for ``--reps``
repetitions, interleaved, plans and applies the same compaction twice: from the blobs dir
(localfs) and from the bucket (s3). The figure is the copy phase's throughput (new-blob bytes
over the time from the first blob step's start to the last one's end, from the store's
checkpoints), s3 relative to localfs; uploads are timed separately. Loopback moto is an
in-memory Python server that copies the whole object for every range request, so this measures
the client path against a slow server, not what a real S3 endpoint would give.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from datetime import datetime
from pathlib import Path

from images import Image

from nydus_compact.planner.planfile import load_plan
from nydus_compact.store.db import open_store
from nydus_compact.store.runs import completed_steps, find_run

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from s3_server import REGION, MotoServer  # noqa: E402

PREFIX = "blobs/"
MB = 1e6


def step_seconds(plan_path: Path, state: Path, kind: str) -> float:
    """Wall time from the first ``kind:`` step's start to the last one's end, in the last apply run."""
    plan, _ = load_plan(plan_path)
    with open_store(state) as store:
        run = find_run(store, plan.digest)
        assert run is not None, f"{state}: no apply run"
        steps = [s for key, s in completed_steps(store, run.id).items() if key.startswith(kind + ":")]
    if not steps:
        return 0.0
    start = min(datetime.fromisoformat(s.started) for s in steps)
    return max((max(datetime.fromisoformat(s.finished) for s in steps) - start).total_seconds(), 0.001)


def measure_s3(image: Image, reps: int, work: Path, srv: MotoServer, run_child) -> dict:  # type: ignore[no-untyped-def]
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    bucket = f"bench-{image.shape.name}-v{image.version}".lower()
    srv.client().create_bucket(Bucket=bucket)
    srv.put_dir(bucket, PREFIX, image.blobs_dir)
    cfg = work / "s3.json"
    cfg.write_text(json.dumps({"version": 2, "backend": {"type": "s3", "s3": {
        "endpoint": srv.endpoint, "scheme": "http", "region": REGION, "bucket_name": bucket,
        "object_prefix": PREFIX, "access_key_id": "bench", "access_key_secret": "bench", "timeout": 120,
    }}}))
    sources = {"localfs": ["--blobs-dir", str(image.blobs_dir)], "s3": ["--backend-config", str(cfg)]}
    copy: dict[str, list[float]] = {name: [] for name in sources}
    upload: list[float] = []
    written = 0
    loads = []
    for _ in range(reps):
        for name, source in sources.items():
            root = work / name
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir()
            plan, state = root / "plan.yaml", root / "state.sqlite"
            run_child("compact", ["plan", str(image.bootstrap), *source, "-o", str(plan), "--state", str(state),
                                  "-O", str(root / "new.boot"), *image.shape.plan_flags()], work)
            out = root / "out"
            # localfs: --blobs-dir is where the source blobs are; new ones go to out/ either way.
            apply_source = ["--backend-config", str(cfg)] if name == "s3" else []
            loads.append(os.getloadavg()[0])
            run_child("compact", ["apply", str(plan), *apply_source, "--blobs-dir", str(out),
                                  "-O", str(root / "new.boot"), "--state", str(state)], work)
            copy[name].append(step_seconds(plan, state, "blob"))
            if name == "s3":
                upload.append(step_seconds(plan, state, "upload"))
            written = sum(p.stat().st_size for p in out.iterdir() if p.is_file() and not p.name.startswith("."))
    shutil.rmtree(work, ignore_errors=True)
    med = {name: sorted(v)[len(v) // 2] for name, v in copy.items()}
    return {
        "image": image.shape.name, "version": image.version, "blob_bytes_written": written,
        "copy_seconds": copy, "upload_seconds": upload,
        "localfs_mb_per_s": written / MB / med["localfs"], "s3_mb_per_s": written / MB / med["s3"],
        "s3_vs_localfs": med["localfs"] / med["s3"], "load_1min": loads,
    }


def table(rows: list[dict]) -> str:
    head = f"{'image':<12} {'v':>1} {'new MB':>7} {'localfs MB/s':>12} {'s3 MB/s':>8} {'s3/localfs':>10} {'upload s':>8} {'load 1m':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        up = sorted(r["upload_seconds"])[len(r["upload_seconds"]) // 2]
        lines.append(
            f"{r['image']:<12} {r['version']:>1} {r['blob_bytes_written'] / MB:>7.1f} {r['localfs_mb_per_s']:>12.1f} "
            f"{r['s3_mb_per_s']:>8.1f} {r['s3_vs_localfs']:>10.3f} {up:>8.2f} {max(r['load_1min']):>7.2f}"
        )
    lines.append("s3 case: apply's copy phase (median over reps) from loopback moto S3 vs from localfs, same run; "
                 "upload s: uploading the new blobs to the bucket; load 1m: highest 1-minute load average seen")
    return "\n".join(lines)
