"""A real S3 endpoint for tests: moto's server mode as a subprocess on 127.0.0.1.

A subprocess, not moto in-process: it must not share our GIL (throughput figures would measure
it) and it must die with SIGKILL like any server. It keeps objects in memory.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from registry_server import free_port

MOTO = importlib.util.find_spec("moto") is not None
REGION = "us-east-1"


class MotoServer:
    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        """As a nydus config names it: host:port (the scheme is a separate field)."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    def start(self) -> MotoServer:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.proc.returncode}")
            try:
                if httpx.get(f"{self.url}/moto-api/", timeout=1).status_code < 500:
                    return self
            except httpx.TransportError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("moto server did not come up in 30 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)
        self.proc = None

    def client(self):  # type: ignore[no-untyped-def]
        """A botocore client for setting up and inspecting buckets (not the code under test)."""
        import botocore.session
        from botocore.config import Config

        return botocore.session.Session().create_client(
            "s3", endpoint_url=self.url, region_name=REGION, aws_access_key_id="test-setup",
            aws_secret_access_key="test-setup", config=Config(s3={"addressing_style": "path"}),
        )

    def put_dir(self, bucket: str, prefix: str, directory: Path, skip: str | None = None) -> None:
        client = self.client()
        for path in sorted(directory.iterdir()):
            if path.name != skip:
                client.put_object(Bucket=bucket, Key=prefix + path.name, Body=path.read_bytes())

    def objects(self, bucket: str, prefix: str = "") -> dict[str, bytes]:
        client = self.client()
        listing = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
        return {o["Key"]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listing}


def serve() -> Iterator[MotoServer]:
    srv = MotoServer().start()
    try:
        yield srv
    finally:
        srv.stop()
