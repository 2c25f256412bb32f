"""`compact apply` of an image plan: the file-based apply writes new blobs and bootstraps into
a local staging dir, then each compacted image is published to its target (spec oci-image.md §4):
blobs (skipped when present, mounted across repositories of one registry, else copied), the
bootstrap layer, the config, child manifests by digest, and the tag's manifest or index last, so
the tag never names a half-published image. Every published blob is checkpointed in the store.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from nydus_compact.applier.apply import ApplyOptions, ApplyResult, Progress, apply_plan
from nydus_compact.applier.errors import ApplyError
from nydus_compact.applier.verify import VerifyReport, verify_outputs
from nydus_compact.backends.registry import UploadStream
from nydus_compact.safeio.faults import fault_point
from nydus_compact.planner.plan import ImageSource, Plan
from nydus_compact.rafs.loader import detect_version
from nydus_compact.safeio import OutputGuard, atomic_write_bytes, is_stdout
from nydus_compact.store.db import Store
from nydus_compact.store.runs import STEP_DONE, find_run, steps

from .compose import Blob, Composed, compose
from .errors import ImageError
from .manifest import Index, Manifest, dumps, is_index, load_json, sha256_digest
from .planning import backend_config_of, blob_backend
from .reference import DockerRef, ImageRef, LayoutRef, parse_reference
from .source import Access, Repo, fetch_manifest, open_repo, tag_digest

MAX_CONFIG = 16 << 20


@dataclass
class Published:
    source: str
    target: str
    digest: str  # what the target tag names now
    manifest_digest: str
    status: str  # "published" | "already-published"
    blobs: list[dict] = field(default_factory=list)  # blob_id, size, status

    def document(self) -> dict:
        return {"source": self.source, "target": self.target, "digest": self.digest,
                "manifest_digest": self.manifest_digest, "status": self.status, "blobs": self.blobs}

    def line(self) -> str:
        counts: dict[str, int] = {}
        for b in self.blobs:
            counts[b["status"]] = counts.get(b["status"], 0) + 1
        detail = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        verb = "already published" if self.status == "already-published" else "published"
        return f"{verb} {self.target} ({self.digest}): {detail or 'no blobs'}"


def apply_image_plan(
    plan: Plan, recorded: str | None, opts: ApplyOptions, access: Access, store: Store, *,
    force: bool = False, progress: Progress | None = None, verified: list[tuple[str, VerifyReport]] | None = None,
) -> tuple[ApplyResult, list[Published]]:
    """Apply an image plan and publish its targets. With ``opts.verify`` every new image is checked
    (new blobs from the work dir, kept ones from the source) before anything is published; the
    reports go to ``verified``, and a failed check publishes nothing."""
    infos = [im.image for im in plan.images]
    if any(info is None for info in infos):
        raise ApplyError(f"{opts.plan_path}: mixes image and file inputs")
    source_ref = parse_reference(infos[0].source)  # type: ignore[union-attr]
    source = open_repo(source_ref, access, scheme=infos[0].source_scheme)  # type: ignore[union-attr]
    targets = [parse_reference(info.target) for info in infos]  # type: ignore[union-attr]
    for info, tgt in zip(infos, targets):
        assert info is not None
        if str(tgt) == info.source and not force:
            raise ApplyError(f"{opts.plan_path}: the target {tgt} is the source image; pass --force to replace it")
    previous = _published_digests(store, plan.digest)
    for k, (info, tgt) in enumerate(zip(infos, targets)):
        _check_source_current(source, info, tgt, previous.get(k), access)  # type: ignore[arg-type]

    bcfg = backend_config_of(source_ref, source, access)
    json_path = opts.output_json
    if json_path is not None and not is_stdout(json_path):
        OutputGuard().input(opts.plan_path, "the plan").inputs([plan.locate(im.path) for im in plan.images], "a source bootstrap") \
            .output(json_path, "the output JSON (--output-json)")
    opts.output_json = None  # the image flow writes its own, with what was published
    published: list[Published] = []
    # One registry target and blobs named by their sha256: each new blob is sent into an upload
    # session of the target while apply writes it, and publishing commits that session.
    streams: dict[int, UploadStream] = {}
    stream_to = None
    if len(targets) == 1 and isinstance(targets[0], DockerRef) and plan.flags.i2_whole_file_id:
        # Opened as publish_one would (scopes for a mount from the source), which then publishes through it.
        stream_to = open_repo(
            targets[0], access, scheme=infos[0].target_scheme, mount_from=source_ref  # type: ignore[union-attr]
        )

        def tee(group: int) -> UploadStream:
            streams[group] = stream_to.stream_upload()  # type: ignore[union-attr]
            return streams[group]

        opts.blob_tee = tee
    try:
        result = apply_plan(plan, recorded, opts, blob_backend(source), bcfg, store, progress)
        streamed = {nb["blob_id"]: streams[g] for nb in result.new_blobs if (g := int(nb["group"][1:])) in streams}
        if opts.verify and result.run_id is not None:
            reports = verify_outputs(
                result.images, result.run_id, opts.blobs_dir, blob_backend(source), store, progress
            )
            if verified is not None:
                verified.extend(reports)
            for boot, report in reports:
                if not report.ok:
                    first = f": {report.problems[0]}" if report.problems else ""
                    raise ApplyError(f"{report.summary(boot)}{first}; nothing was published")
        if result.run_id is not None:
            for k, (info, tgt, image) in enumerate(zip(infos, targets, result.images)):
                assert info is not None
                published.append(publish_one(
                    k, info, tgt, source, Path(image["bootstrap"]), image["blobs"],
                    {nb["blob_id"] for nb in result.new_blobs}, opts.blobs_dir, plan, store, result.run_id,
                    access, force, streamed, stream_to,
                ))
    finally:
        for stream in streams.values():
            stream.abort()  # a no-op for a committed one; sends nothing more for the others
        if stream_to is not None:
            stream_to.close()
        opts.blob_tee = None
        opts.output_json = json_path
        source.close()
    if json_path is not None:
        doc = {**result.output_document(), "published": [p.document() for p in published]}
        text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
        if is_stdout(json_path):
            sys.stdout.write(text)
        else:
            atomic_write_bytes(json_path, text.encode())
    return result, published


def _published_digests(store: Store, plan_digest: str) -> dict[int, str]:
    run = find_run(store, plan_digest)
    if run is None:
        return {}
    out = {}
    for key, step in steps(store, run.id).items():
        if key.startswith("publish:") and key.endswith(":tag") and step.status == STEP_DONE and step.sha256:
            out[int(key.split(":")[1])] = step.sha256
    return out


def _check_source_current(source: Repo, info: ImageSource, target: ImageRef, published: str | None, access: Access) -> None:
    """A source tag that moved since planning makes the plan stale (unless it moved to our own result)."""
    ref = parse_reference(info.source)
    if ref.digest is not None:
        return
    now = tag_digest(source, ref)
    if now == info.digest:
        return
    if published is not None and now == published:
        return  # the target was the source (--force) and already names the result
    what = "is gone" if now is None else f"now names {now}"
    raise ApplyError(
        f"plan is stale: source {ref} {what}, the plan was made from {info.digest}; run `compact plan` again"
    )


def publish_one(
    k: int, info: ImageSource, target: ImageRef, source: Repo, new_boot: Path, table: list[str], new_ids: set[str],
    staged: Path, plan: Plan, store: Store, run_id: int, access: Access, force: bool,
    streamed: dict[str, UploadStream] | None = None, dest: Repo | None = None,
) -> Published:
    """Publish image ``k``'s new manifest to ``target``: ``dest`` if given (the caller closes it),
    else a repository opened here."""
    source_ref = parse_reference(info.source)
    mdata, mserved, _ = fetch_manifest(source, source_ref, info.manifest_digest)
    manifest = Manifest.parse(mdata, f"{source_ref} ({info.manifest_digest})", mserved)
    config_bytes = source.blob_bytes(manifest.config.hex, MAX_CONFIG)
    if sha256_digest(config_bytes) != manifest.config.digest:
        raise ImageError(f"{source_ref}: config {manifest.config.digest} does not match its digest")
    bootstrap = new_boot.read_bytes()
    version = detect_version(bootstrap)
    layers = {d.hex: d.raw for d in manifest.blob_layers}
    observed = {b.blob_id: b.observed_size for b in plan.blobs if b.observed_size is not None}
    sizes = {b: (staged / b).stat().st_size if b in new_ids else observed[b] for b in table}
    composed = compose(
        bootstrap, version or 6, table, sizes, base_manifest=manifest.doc, base_config=load_json(config_bytes, "config"),
        source_layers=layers, source_bootstrap_layer=manifest.bootstrap_layer.raw if manifest.bootstrap_layer else None,
        was_reference={b for b in table if b not in layers and b not in new_ids},
    )
    index_blob, other_entries = None, []
    if info.digest != info.manifest_digest:
        idata, iserved, _ = fetch_manifest(source, source_ref, info.digest)
        index = Index.parse(idata, f"{source_ref} ({info.digest})", iserved)
        doc = json.loads(idata)
        for entry in doc["manifests"]:
            if entry.get("digest") == info.manifest_digest:
                entry.update(digest=composed.manifest.digest, size=len(composed.manifest.data),
                             mediaType=composed.manifest.media_type)
            else:
                other_entries.append(entry)
        index_blob = Blob(dumps(doc), index.media_type)
    final = index_blob or composed.manifest
    published = Published(info.source, str(target), final.digest, composed.manifest.digest, "published")

    owned = dest is None
    if dest is None:
        dest = open_repo(target, access, scheme=info.target_scheme, create=isinstance(target, LayoutRef), mount_from=source_ref)
    try:
        current = tag_digest(dest, target)
        recorded = {key: s for key, s in steps(store, run_id).items() if key.startswith(f"publish:{k}:")}
        if current == final.digest:
            published.status = "already-published"
            published.blobs = [
                {"blob_id": b, "size": sizes[b], "status": _recorded(recorded, k, b) or "present"}
                for b in composed.layers + composed.reference_blobs
            ]
            return published
        if current is not None and not force:
            raise ApplyError(f"{target} names another image ({current}); refusing to replace it without --force")
        # Apply named each new blob by the sha256 of the bytes it wrote, unless upstream's ids (the
        # chunk data's sha256) were asked for: those the registry must be shown not to match.
        named = plan.flags.i2_whole_file_id or version == 5
        for n, b in enumerate(composed.layers + composed.reference_blobs):
            if b in new_ids:
                uploaded = dest.put_blob_file(b, staged / b, named_by_content=named, streamed=(streamed or {}).get(b))
                status = "uploaded" if uploaded else "present"
            else:
                status = dest.receive_blob(b, sizes[b], source)
            status = _recorded(recorded, k, b) if status == "present" and _recorded(recorded, k, b) else status
            _record(store, run_id, f"publish:{k}:blob:{b}", b, sizes[b], status)
            published.blobs.append({"blob_id": b, "size": sizes[b], "status": status})
            fault_point(f"publish-blob:{n}")
        for blob in (composed.bootstrap_layer, composed.config):
            dest.put_blob_bytes(blob.digest.split(":")[1], blob.data)
        fault_point("publish-config")
        if index_blob is not None:
            if not source_ref.same_repository(target):
                for entry in other_entries:
                    _copy_tree(source, dest, source_ref, entry)
            dest.put_manifest(composed.manifest.data, composed.manifest.media_type, composed.manifest.digest)
            fault_point("publish-child-manifest")
        fault_point("publish-before-tag")
        dest.put_manifest(final.data, final.media_type, target.tag)  # type: ignore[arg-type]
        _record(store, run_id, f"publish:{k}:tag", None, len(final.data), str(target), sha=final.digest)
        fault_point("publish-done")
    finally:
        if owned:
            dest.close()
    return published


def _recorded(recorded: dict, k: int, blob_id: str) -> str | None:
    step = recorded.get(f"publish:{k}:blob:{blob_id}")
    return step.detail if step is not None else None


def _record(store: Store, run_id: int, key: str, blob_id: str | None, size: int, detail: str, sha: str | None = None) -> None:
    from nydus_compact.store.runs import record_step

    record_step(store, run_id, key, STEP_DONE, blob_id=blob_id, size=size, detail=detail, sha256=sha,
                bytes=size if detail in ("uploaded", "copied") else 0)


def _copy_tree(source: Repo, dest: Repo, source_ref: ImageRef, entry: dict) -> None:
    """A manifest (or nested index) named by an index entry, with everything it references."""
    digest = entry.get("digest", "")
    data, served, _ = fetch_manifest(source, source_ref, digest)
    media_type = entry.get("mediaType") or served or ""
    if is_index(data, media_type):
        for child in Index.parse(data, digest, media_type).manifests:
            _copy_tree(source, dest, source_ref, child.raw)
    else:
        m = Manifest.parse(data, digest, media_type)
        for d in [m.config, *m.layers]:
            dest.receive_blob(d.hex, d.size, source)
    dest.put_manifest(data, media_type, digest)
