"""The image builder: layer merging, blobs per layer, dedup, determinism, options and the CLI.

Every image is checked against a merged copy of its layers made independently here (shutil and
os calls applying the OCI rules), read back through the real readers and rafs.blob.ChunkSource.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from helpers.cli import compact

from nydus_compact.backends.localfs import LocalFsBackend
from nydus_compact.mkimage.builder import BuildOptions, BuildResult, build_image
from nydus_compact.mkimage.errors import BuildError
from nydus_compact.mkimage.sample import make_sample_layers
from nydus_compact.rafs.blob import ChunkSource
from nydus_compact.rafs.blob_meta import read_blob_meta
from nydus_compact.rafs.compression import Compressor
from nydus_compact.rafs.digest import Digester
from nydus_compact.rafs.flags import BlobFeatures, SuperFlags
from nydus_compact.rafs.loader import load_bootstrap

CHUNK = 64 * 1024
OPAQUE = ".wh..wh..opq"
XATTR_PREFIXES = (b"user.", b"trusted.", b"security.")


# -- an independent OCI layer applier ---------------------------------------------------------


def apply_layers(layers: list[Path], dest: Path) -> Path:
    """Apply layer directories lower first onto ``dest`` with plain file operations."""
    dest.mkdir()
    dir_source: dict[Path, Path] = {dest: layers[0]}
    for layer in layers:
        dir_source[dest] = layer
        _apply_dir(layer, dest, {}, dir_source)
    # Directory attributes come from the uppermost layer holding the directory; set them last,
    # because filling a directory changes its mtime.
    for target in sorted(dir_source, key=lambda p: len(p.parts), reverse=True):
        if target.is_dir() and not target.is_symlink():
            shutil.copystat(dir_source[target], target, follow_symlinks=False)
            st = os.lstat(dir_source[target])
            os.lchown(target, st.st_uid, st.st_gid)
    return dest


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def _apply_dir(src: Path, dst: Path, links: dict, dir_source: dict) -> None:
    names = sorted(os.listdir(src))
    if OPAQUE in names:
        for old in os.listdir(dst):
            _remove(dst / old)
    for name in names:
        if name.startswith(".wh.") and not name.startswith(".wh..wh."):
            _remove(dst / name[4:])
    for name in names:
        if name.startswith(".wh."):
            continue
        s, d = src / name, dst / name
        st = os.lstat(s)
        if stat.S_ISDIR(st.st_mode):
            if os.path.lexists(d) and not (d.is_dir() and not d.is_symlink()):
                _remove(d)
            d.mkdir(exist_ok=True)
            dir_source[d] = s
            _apply_dir(s, d, links, dir_source)
            continue
        _remove(d)
        key = (st.st_dev, st.st_ino)
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1 and key in links:
            os.link(links[key], d)
            continue
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(s), d)
        elif stat.S_ISFIFO(st.st_mode):
            os.mkfifo(d)
        else:
            shutil.copyfile(s, d)
        links[key] = d
        shutil.copystat(s, d, follow_symlinks=False)
        os.lchown(d, st.st_uid, st.st_gid)


# -- facts compared between the merged copy and the image --------------------------------------


def _kind(mode: int) -> str:
    return {stat.S_IFDIR: "dir", stat.S_IFREG: "file", stat.S_IFLNK: "symlink", stat.S_IFIFO: "fifo"}[stat.S_IFMT(mode)]


def tree_facts(root: Path, *, with_ids: bool = True) -> tuple[dict, set]:
    """(path → facts, hard-link groups) of a real directory tree."""
    facts = {}
    groups = defaultdict(set)
    every = [root] + [Path(d) / n for d, dirs, files in os.walk(root) for n in [*dirs, *files]]
    for path in every:
        rel = path.relative_to(root)
        image_path = b"/" + os.fsencode(rel) if path != root else b"/"
        st = os.lstat(path)
        fact = {
            "kind": _kind(st.st_mode),
            "mode": st.st_mode,
            "nlink": st.st_nlink,
            "mtime": (0, 0) if path == root else divmod(st.st_mtime_ns, 10**9),
            "ids": (st.st_uid, st.st_gid) if with_ids else (0, 0),
            "xattrs": sorted(
                (os.fsencode(k), os.getxattr(path, k, follow_symlinks=False))
                for k in os.listxattr(path, follow_symlinks=False)
                if os.fsencode(k).startswith(XATTR_PREFIXES)
            ),
        }
        if stat.S_ISREG(st.st_mode):
            fact["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
            if st.st_nlink > 1:
                groups[(st.st_dev, st.st_ino)].add(image_path)
        if stat.S_ISLNK(st.st_mode):
            fact["symlink"] = os.fsencode(os.readlink(path))
        facts[image_path] = fact
    return facts, {frozenset(g) for g in groups.values()}


def image_facts(result: BuildResult) -> tuple[dict, set]:
    bs = result.bootstrap
    source = ChunkSource(bs, LocalFsBackend(dir=result.bootstrap_path.parent / "blobs"))
    facts = {}
    groups = defaultdict(set)
    for pos, node in enumerate(bs.nodes):
        fact = {
            "kind": _kind(node.mode),
            "mode": node.mode,
            "nlink": node.nlink,
            "mtime": (node.mtime, node.mtime_nsec),
            "ids": (node.uid, node.gid),
            "xattrs": sorted(node.xattrs),
        }
        if node.is_reg:
            data = source.read_file(node)
            assert len(data) == node.size
            fact["sha256"] = hashlib.sha256(data).hexdigest()
            if node.nlink > 1:
                groups[node.link].add(node.path)
        if node.is_symlink:
            fact["symlink"] = node.symlink
        facts[node.path] = fact
    return facts, {frozenset(g) for g in groups.values()}


def assert_image_matches(result: BuildResult, layers: list[Path], tmp_path: Path, *, repeatable=False) -> Path:
    merged = apply_layers(layers, tmp_path / "merged")
    expected, expected_groups = tree_facts(merged, with_ids=not repeatable)
    actual, actual_groups = image_facts(result)
    assert sorted(actual) == sorted(expected)
    for path in expected:
        assert actual[path] == expected[path], path
    assert actual_groups == expected_groups
    # The written bootstrap is what the result describes.
    reloaded = load_bootstrap(result.bootstrap_path)
    assert [n.path for n in reloaded.nodes] == [n.path for n in result.bootstrap.nodes]
    assert np.array_equal(reloaded.chunks, result.bootstrap.chunks)
    return merged


def expected_blob_chunks(layers: list[Path], chunk_size: int) -> list[int]:
    """New distinct chunks each layer adds, in layer order, layers adding none left out."""
    seen = set()
    counts = []
    for layer in layers:
        new = 0
        for dirpath, dirnames, filenames in os.walk(layer):
            for name in filenames:
                path = Path(dirpath) / name
                if name.startswith(".wh.") or not stat.S_ISREG(os.lstat(path).st_mode):
                    continue
                data = path.read_bytes()
                for off in range(0, len(data), chunk_size):
                    piece = data[off : off + chunk_size]
                    key = (hashlib.sha256(piece).digest(), len(piece))
                    if key not in seen:
                        seen.add(key)
                        new += 1
        if new:
            counts.append(new)
    return counts


def check_v6(result: BuildResult, merged: Path, tmp_path: Path) -> None:
    from helpers.erofs import check_v6_image

    check_v6_image(result.bootstrap_path, result.bootstrap_path.parent / "blobs", merged, tmp_path / "fsck")


# -- hand-made layers -------------------------------------------------------------------------


def make_handmade_layers(root: Path) -> list[Path]:
    """Three layers exercising every merge rule; the third adds no new chunk."""
    l0, l1, l2 = (root / n for n in ("l0", "l1", "l2"))

    def put(path: Path, data: bytes, mode: int = 0o644) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(mode)

    block = bytes(range(256)) * 256  # one 64 KiB chunk, repeated for dedup inside a file
    big = block + os.urandom(CHUNK) + block + b"tail"
    put(l0 / "a/keep.txt", b"keep\n")
    put(l0 / "a/gone.txt", b"gone\n")
    put(l0 / "a/same", b"lower same\n")
    put(l0 / "a/sub/deep.txt", b"deep\n")
    put(l0 / "a/owned", b"owned\n", 0o600)
    os.chown(l0 / "a/owned", 1234, 5678)
    os.setxattr(l0 / "a/keep.txt", "user.test", b"hello")
    os.setxattr(l0 / "a", "user.dir", b"1")
    put(l0 / "b/old1", b"old1\n")
    put(l0 / "b/old2/x", b"x\n")
    put(l0 / "c", b"c is a file\n")
    put(l0 / "d/inner", b"inner\n")
    put(l0 / "links/one", os.urandom(10_000), 0o755)
    os.link(l0 / "links/one", l0 / "links/two")
    os.link(l0 / "links/one", l0 / "links/three")
    put(l0 / "big.bin", big)
    put(l0 / "empty", b"")
    os.mkfifo(l0 / "dev-fifo")
    os.symlink("a/keep.txt", l0 / "to-keep")
    (l0 / "emptydir").mkdir()

    put(l1 / "a/.wh.gone.txt", b"")
    put(l1 / "a/.wh.sub", b"")
    put(l1 / "a/.wh.same", b"")
    put(l1 / "a/same", b"upper same\n")  # a whiteout hides lower content only
    put(l1 / f"b/{OPAQUE}", b"")
    put(l1 / "b/new", b"new\n")
    put(l1 / "c/file", b"c is a dir now\n")
    put(l1 / "d", b"d is a file now\n", 0o640)
    put(l1 / "links/two", b"two was overwritten\n")
    os.symlink("../big.bin", l1 / "a/to-big")

    put(l2 / "e/big-copy.bin", big)  # only chunks already stored: no blob for this layer
    put(l2 / ".wh.emptydir", b"")
    put(l2 / "e/empty2", b"")
    for layer in (l0, l1, l2):
        os.chmod(layer, 0o755)
    return [l0, l1, l2]


# -- tests ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_layers(tmp_path_factory) -> list[Path]:
    return make_sample_layers(tmp_path_factory.mktemp("sample") / "layers")


def test_sample_v5_reads_back_like_the_merged_layers(sample_layers, tmp_path):
    opts = BuildOptions(fs_version=5, chunk_size=CHUNK, compressor=Compressor.ZSTD, digester=Digester.BLAKE3)
    result = build_image(sample_layers, tmp_path / "out", opts)
    assert_image_matches(result, sample_layers, tmp_path)
    bs = result.bootstrap
    assert bs.version == 5 and bs.chunk_size == CHUNK
    assert bs.flags & 0xFF == SuperFlags.COMPRESSION_ZSTD | SuperFlags.HASH_BLAKE3 | SuperFlags.EXPLICIT_UID_GID
    assert [b.chunk_count for b in bs.blobs] == expected_blob_chunks(sample_layers, CHUNK)
    assert [p.name for p in result.blob_paths] == [b.blob_id for b in bs.blobs]
    for path, info in zip(result.blob_paths, bs.blobs):
        assert path.read_bytes() and hashlib.sha256(path.read_bytes()).hexdigest() == info.blob_id
    assert ChunkSource(bs, LocalFsBackend(dir=tmp_path / "out" / "blobs")).verify() == []


def test_sample_has_unreferenced_mostly_dead_and_tiny_blobs(sample_layers, tmp_path):
    bs = build_image(sample_layers, tmp_path / "out", BuildOptions(fs_version=5, chunk_size=CHUNK)).bootstrap
    assert len(bs.blobs) == 5
    used = [0] * len(bs.blobs)
    for blob_index, _, size in {(int(c["blob_index"]), int(c["index"]), int(c["uncompressed_size"])) for c in bs.chunks}:
        used[blob_index] += size
    ratio = [u / b.uncompressed_size for u, b in zip(used, bs.blobs)]
    assert ratio[2] == 0  # layer 2 is completely overwritten by layer 3
    assert 0 < ratio[0] < 0.5  # the base is mostly dead
    assert ratio[1] > 0.9
    assert all(b.compressed_size < 16 * 1024 for b in bs.blobs[3:])


def test_sample_dedup_points_at_the_first_copy(sample_layers, tmp_path):
    bs = build_image(sample_layers, tmp_path / "out", BuildOptions(fs_version=5, chunk_size=CHUNK)).bootstrap
    by_path = {n.path: n for n in bs.nodes}
    loc = ["blob_index", "index", "compressed_offset", "block_id"]
    original = bs.node_chunks(by_path[b"/usr/bin/tool-a"])[loc]
    copy = bs.node_chunks(by_path[b"/usr/local/bin/tool-a-copy"])[loc]
    assert np.array_equal(original, copy) and set(copy["blob_index"]) == {0}
    dup = bs.node_chunks(by_path[b"/usr/lib/libdup.so"])
    assert len(dup) == 4 and len(np.unique(dup[loc][:3])) == 1


def test_sample_v6_passes_fsck_erofs(sample_layers, tmp_path):
    opts = BuildOptions(
        fs_version=6, chunk_size=CHUNK, compressor=Compressor.LZ4_BLOCK, digester=Digester.SHA256,
        ci_version=2, blob_toc=True,
    )  # fmt: skip
    result = build_image(sample_layers, tmp_path / "out", opts)
    merged = assert_image_matches(result, sample_layers, tmp_path)
    bs = result.bootstrap
    assert bs.version == 6 and bs.compressor == Compressor.LZ4_BLOCK and bs.digester == Digester.SHA256
    assert [b.chunk_count for b in bs.blobs] == expected_blob_chunks(sample_layers, CHUNK)
    for path, info in zip(result.blob_paths, bs.blobs):
        want = BlobFeatures.CHUNK_INFO_V2 | BlobFeatures.HAS_TOC | BlobFeatures.ALIGNED
        assert info.features & want == want
        read_blob_meta(path, info, path.stat().st_size)
    assert ChunkSource(bs, LocalFsBackend(dir=tmp_path / "out" / "blobs")).verify() == []
    check_v6(result, merged, tmp_path)


@pytest.mark.parametrize(
    "opts",
    [
        BuildOptions(fs_version=6, chunk_size=CHUNK, compressor=Compressor.NONE, digester=Digester.BLAKE3),
        BuildOptions(fs_version=5, chunk_size=CHUNK, compressor=Compressor.LZ4_BLOCK, digester=Digester.SHA256),
    ],
    ids=["v6-none-blake3", "v5-lz4-sha256"],
)
def test_handmade_layers_merge_like_oci(tmp_path, opts):
    layers = make_handmade_layers(tmp_path / "layers")
    result = build_image(layers, tmp_path / "out", opts)
    merged = assert_image_matches(result, layers, tmp_path)
    bs = result.bootstrap
    paths = {n.path for n in bs.nodes}
    assert {b"/a/gone.txt", b"/a/sub", b"/a/sub/deep.txt", b"/b/old1", b"/b/old2", b"/emptydir"}.isdisjoint(paths)
    assert not any(b".wh." in p for p in paths)
    by_path = {n.path: n for n in bs.nodes}
    assert by_path[b"/c"].is_dir and by_path[b"/d"].is_reg
    assert by_path[b"/a/keep.txt"].xattrs == [(b"user.test", b"hello")]
    assert (by_path[b"/a/owned"].uid, by_path[b"/a/owned"].gid) == (1234, 5678)
    # links/two was replaced: the other two names stay one hard link of two names.
    one, three = by_path[b"/links/one"], by_path[b"/links/three"]
    assert one.nlink == three.nlink == 2 and by_path[b"/links/two"].nlink == 1
    # Layer 2 adds only known chunks, so the image has two blobs, the big file's repeat stored once.
    assert [b.chunk_count for b in bs.blobs] == expected_blob_chunks(layers, CHUNK) == [13, 5]
    assert len(result.blob_paths) == 2 and sorted(os.listdir(tmp_path / "out" / "blobs")) == sorted(
        b.blob_id for b in bs.blobs
    )
    big = bs.node_chunks(by_path[b"/big.bin"])
    assert big[0]["index"] == big[2]["index"] and big[0]["compressed_offset"] == big[2]["compressed_offset"]
    if opts.fs_version == 6:
        check_v6(result, merged, tmp_path)


def test_repeatable_zeroes_ids_and_clears_the_flag(tmp_path):
    layers = make_handmade_layers(tmp_path / "layers")
    result = build_image(layers, tmp_path / "out", BuildOptions(chunk_size=CHUNK, repeatable=True))
    assert not result.bootstrap.flags & SuperFlags.EXPLICIT_UID_GID
    assert all(n.uid == 0 and n.gid == 0 for n in result.bootstrap.nodes)
    assert_image_matches(result, layers, tmp_path, repeatable=True)


@pytest.mark.parametrize("version", [5, 6])
def test_builds_are_byte_identical(tmp_path, version):
    # Two separately written copies of the sample (other inodes, other paths) → the same bytes.
    outs = []
    for run in ("one", "two"):
        layers = make_sample_layers(tmp_path / run / "layers", seed=7)
        opts = BuildOptions(fs_version=version, chunk_size=CHUNK, blob_toc=version == 6)
        outs.append(build_image(layers, tmp_path / run / "out", opts))
    first, second = outs
    assert first.bootstrap_path.read_bytes() == second.bootstrap_path.read_bytes()
    assert [p.name for p in first.blob_paths] == [p.name for p in second.blob_paths]
    for a, b in zip(first.blob_paths, second.blob_paths):
        assert a.read_bytes() == b.read_bytes()
    assert not [p for p in (tmp_path / "one" / "out" / "blobs").iterdir() if p.name.startswith(".")]


def test_sample_seed_changes_the_data(tmp_path):
    a = make_sample_layers(tmp_path / "a", seed=1)
    b = make_sample_layers(tmp_path / "b", seed=2)
    rel = "0-base/usr/bin/tool-a"
    assert (a[0].parent / rel).read_bytes() != (b[0].parent / rel).read_bytes()
    with pytest.raises(BuildError, match="not empty"):
        make_sample_layers(tmp_path / "a")


@pytest.mark.parametrize(
    "opts, message",
    [
        (BuildOptions(chunk_size=3000), "power of two"),
        (BuildOptions(chunk_size=32 << 20), "power of two"),
        (BuildOptions(fs_version=5, blob_toc=True), "fs version 6"),
        (BuildOptions(fs_version=5, ci_version=2), "fs version 6"),
        (BuildOptions(compressor=Compressor.GZIP), "not supported"),
        (BuildOptions(fs_version=4), "5 or 6"),
    ],
)
def test_bad_options_are_build_errors(tmp_path, opts, message):
    (tmp_path / "l0").mkdir()
    with pytest.raises(BuildError, match=message):
        build_image([tmp_path / "l0"], tmp_path / "out", opts)


def test_layer_must_be_a_directory(tmp_path):
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(BuildError, match="not a directory"):
        build_image([tmp_path / "file"], tmp_path / "out")
    with pytest.raises(BuildError, match="layer"):
        build_image([tmp_path / "missing"], tmp_path / "out")


def test_image_without_file_data_has_no_blobs(tmp_path):
    layer = tmp_path / "l0"
    (layer / "dir").mkdir(parents=True)
    (layer / "empty").write_bytes(b"")
    os.symlink("dir", layer / "link")
    result = build_image([layer], tmp_path / "out", BuildOptions(fs_version=5))
    assert result.bootstrap.blobs == [] and result.blob_paths == []
    assert_image_matches(result, [layer], tmp_path)


# -- CLI --------------------------------------------------------------------------------------



def test_cli_builds_the_sample_and_refuses_a_non_empty_output(tmp_path):
    out = tmp_path / "out"
    proc = compact("mkimage", "--sample", "-o", str(out), "--chunk-size", "64KiB", "--fs-version", "5", "--json")
    assert proc.rc == 0, proc.err
    doc = json.loads(proc.out)
    assert doc["bootstrap"] == str(out / "image.boot") and doc["fs_version"] == 5
    assert len(doc["blobs"]) == 5 and all(Path(b["path"]).is_file() for b in doc["blobs"])
    assert load_bootstrap(out / "image.boot").chunk_size == CHUNK

    first_bytes = (out / "image.boot").read_bytes()
    again = compact("mkimage", "--sample", "-o", str(out))
    assert again.rc == 1 and "--force" in again.err and len(again.err.splitlines()) == 1
    forced = compact("mkimage", "--sample", "-o", str(out), "--force", "--chunk-size", "0x10000", "--fs-version", "5")
    assert forced.rc == 0, forced.err
    assert forced.out == "" and forced.err.splitlines()[0].startswith(f"bootstrap {out / 'image.boot'}")
    assert (out / "image.boot").read_bytes() == first_bytes


def test_cli_builds_layer_directories(tmp_path):
    layers = make_handmade_layers(tmp_path / "layers")
    out = tmp_path / "out"
    proc = compact("mkimage", *map(str, layers), "-o", str(out), "--chunk-size", "65536", "--compressor", "none",
                   "--digester", "sha256", "--repeatable")  # fmt: skip
    assert proc.rc == 0, proc.err
    lines = proc.err.splitlines()  # what was built is a status report: stdout stays empty
    assert proc.out == "" and len(lines) == 3 and lines[0].startswith("bootstrap ") and all(x.startswith("blob ") for x in lines[1:])
    bs = load_bootstrap(out / "image.boot")
    assert bs.compressor == Compressor.NONE and bs.digester == Digester.SHA256
    assert not bs.flags & SuperFlags.EXPLICIT_UID_GID


@pytest.mark.parametrize(
    "args",
    [
        ["--chunk-size", "3000"],
        ["--chunk-size", "lots"],
        ["--compressor", "gzip"],
        ["--digester", "md5"],
        ["--fs-version", "5", "--blob-toc"],
    ],
)
def test_cli_rejects_bad_options_in_one_line(tmp_path, args):
    proc = compact("mkimage", "--sample", "-o", str(tmp_path / "out"), *args)
    assert proc.rc == 64  # a bad option value is a usage error
    assert len(proc.err.splitlines()) == 1 and proc.err.startswith("compact mkimage: error:")
    assert "Traceback" not in proc.err and not (tmp_path / "out").exists()


def test_cli_needs_layers_or_sample(tmp_path):
    proc = compact("mkimage", "-o", str(tmp_path / "out"))
    assert proc.rc == 64 and "--sample" in proc.err
