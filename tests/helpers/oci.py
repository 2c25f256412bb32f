"""Images in OCI layouts and registries for the image-flow tests, judged by skopeo.

Images are built by the project's builder (`compact mkimage --output-image oci:DIR:TAG`) and
pushed with `skopeo copy`; results are read back with `skopeo inspect --raw` and copied into a
fresh layout with `skopeo copy` (which checks every digest).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from nydus_compact.image.bootlayer import extract_bootstrap

SKOPEO = shutil.which("skopeo")


def skopeo(*args: str | Path) -> subprocess.CompletedProcess:
    r = subprocess.run(["skopeo", *map(str, args)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"skopeo {' '.join(map(str, args))}: {r.stderr}"
    return r


def push(src: str, dest: str, *, creds: str | None = None, all_images: bool = False) -> None:
    """skopeo copy SRC docker://DEST (plain HTTP)."""
    skopeo("copy", "-q", "--dest-tls-verify=false", *(["--dest-creds", creds] if creds else []),
           *(["--all"] if all_images else []), src, dest)


def raw(ref: str, *, creds: str | None = None) -> dict:
    flags = ["--tls-verify=false", *(["--creds", creds] if creds else [])] if ref.startswith("docker://") else []
    return json.loads(skopeo("inspect", "--raw", *flags, ref).stdout)


def config(ref: str) -> dict:
    return json.loads(skopeo("inspect", "--config", "--raw", "--tls-verify=false", ref).stdout)


def inspect_fails(ref: str) -> bool:
    """True if the reference names nothing (e.g. a tag that must not exist yet)."""
    r = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", ref], capture_output=True, text=True, timeout=60)
    return r.returncode != 0


def pull(ref: str, layout: Path, *, creds: str | None = None, all_images: bool = False) -> str:
    """skopeo copy of REF into a fresh layout (every digest checked); returns oci:LAYOUT:pulled."""
    dest = f"oci:{layout}:pulled"
    skopeo("copy", "-q", "--src-tls-verify=false", *(["--src-creds", creds] if creds else []),
           *(["--all"] if all_images else []), ref, dest)
    return dest


def layout_bootstrap(layout: Path, manifest: dict, out: Path) -> Path:
    """The bootstrap of a pulled image, unpacked from its last layer."""
    layer = manifest["layers"][-1]["digest"].split(":")[1]
    out.write_bytes(extract_bootstrap((layout / "blobs" / "sha256" / layer).read_bytes(), str(layout)))
    return out
