"""Ranged-read throughput of two S3 clients against the loopback moto server (issue 14's choice).

    python3 bench/s3_clients.py [--objects 8] [--object-mib 8] [--reps 2]

botocore (the s3 backend's client) against obstore (a Rust object_store binding; not a project
dependency: `pip install obstore` to include it, else it is skipped). Every object is read whole
as back-to-back Range GETs of 1 MiB and 4 MiB, one at a time and 4 in flight; printed: MB/s and
the client's CPU time per request, with the load average.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from s3_server import REGION, MotoServer  # noqa: E402

BUCKET = "bench-clients"
MB = 1e6


def botocore_reader(srv: MotoServer):  # type: ignore[no-untyped-def]
    client = srv.client()

    def read(key: str, offset: int, size: int) -> bytes:
        return client.get_object(Bucket=BUCKET, Key=key, Range=f"bytes={offset}-{offset + size - 1}")["Body"].read()

    return read


def obstore_reader(srv: MotoServer):  # type: ignore[no-untyped-def]
    import obstore
    from obstore.store import S3Store

    store = S3Store(
        BUCKET, endpoint=srv.url, region=REGION, access_key_id="test-setup", secret_access_key="test-setup",
        client_options={"allow_http": True}, virtual_hosted_style_request=False,
    )

    def read(key: str, offset: int, size: int) -> bytes:
        return bytes(obstore.get_range(store, key, start=offset, length=size))

    return read


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=8)
    parser.add_argument("--object-mib", type=int, default=8)
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()
    srv = MotoServer().start()
    try:
        setup = srv.client()
        setup.create_bucket(Bucket=BUCKET)
        size = args.object_mib << 20
        objects = {f"blob{i}": os.urandom(size) for i in range(args.objects)}
        for key, data in objects.items():
            setup.put_object(Bucket=BUCKET, Key=key, Body=data)
        clients = {"botocore": botocore_reader(srv)}
        try:
            clients["obstore"] = obstore_reader(srv)
        except ImportError:
            print("obstore is not installed: measuring botocore only", file=sys.stderr)
        print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        for rng in (1 << 20, 4 << 20):
            reads = [(k, off, rng) for k in objects for off in range(0, size, rng)]
            for rep in range(args.reps):
                for name, read in clients.items():
                    for inflight in (1, 4):
                        wall, cpu = time.perf_counter(), time.process_time()
                        with ThreadPoolExecutor(inflight) as pool:
                            got = list(pool.map(lambda r: read(*r), reads))
                        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                        assert b"".join(got) == b"".join(objects.values())
                        print(f"rep {rep} {name:9} range {rng >> 20} MiB, {inflight} in flight: "
                              f"{len(objects) * size / MB / wall:7.1f} MB/s, client CPU {cpu / len(reads) * 1000:5.2f} ms/request")
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        srv.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
