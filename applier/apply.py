"""`compact apply`: execute a reviewed plan idempotently, with checkpoints in the store.

Order of work, each step checkpointed: stale-plan check, re-validation of the decisions
against the source bootstrap, one step per new blob (temp file, fsync, rename to its id),
the new bootstrap, the output JSON. A rerun skips completed steps after checking their outputs
still exist with the recorded size and sha256; source blobs are never written or deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, replace
from pathlib import Path

from nydus_compact.backends.base import BlobBackend
from nydus_compact.backends.config import BackendConfig, map_local_paths
from nydus_compact.backends.errors import BlobNotFoundError
from nydus_compact import version
from nydus_compact.backends.localfs import LocalFsBackend
from nydus_compact.planner.config import CompactConfig, canonical_json
from nydus_compact.planner.errors import PlanError
from nydus_compact.planner.facts import SourceBlob
from nydus_compact.planner.fleet import ImageProjection, Union, project
from nydus_compact.planner.guard import plan_guard
from nydus_compact.planner.layout import Layout, NewBlob, TableEntry
from nydus_compact.planner.plan import Plan
from nydus_compact.planner.formatting import plural
from nydus_compact.planner.review import path_of_occurrence, relayout
from nydus_compact.rafs.loader import bootstrap_sha256, load_bootstrap, load_bootstrap_hashed, serialize_bootstrap
from nydus_compact.rafs.errors import RafsFormatError
from nydus_compact.rafs.model import BlobInfo, Bootstrap, Serialized, empty_chunks
from nydus_compact.safeio import atomic_writer, is_stdout, remove_stale_temps
from nydus_compact.store.db import Store
from nydus_compact.store.runs import (
    RUN_FAILED,
    RUN_SUCCEEDED,
    STEP_DONE,
    STEP_RUNNING,
    STEP_SKIPPED,
    completed_steps,
    find_run,
    finish_run,
    record_step,
    start_run,
)

from .blobs import BlobTee, CopyJob, SourceCheck, WrittenBlob, same_file, temp_prefix, write_new_blob
from .errors import ApplyError, SourceCorruptError
from nydus_compact.safeio.faults import fault_point
from .lock import blobs_dirs_locked

# How often the main thread wakes up to act on Ctrl-C / SIGTERM while new blobs are written.
SIGNAL_CHECK = 0.1
# (label, done bytes, total bytes); a total of 0 announces a phase that counts no bytes.
Progress = Callable[[str, int, int], None]


@dataclass
class ApplyOptions:
    plan_path: Path
    blobs_dir: Path  # where new blobs are written
    output_bootstrap: Path | None = None  # single-image plans only
    output_json: Path | None = None
    verify: bool = False  # check the new image after writing it
    jobs: int = 2  # new blobs written at once
    output_dir: Path | None = None  # new bootstraps go here, named after their sources
    verify_sources: bool = True  # check every copied chunk against its digest
    blob_tee: Callable[[int], BlobTee] | None = None  # CopyJob.tee: where else new blobs' bytes go


@dataclass
class ApplyResult:
    status: str  # "applied" | "resumed" | "already-applied" | "no-changes"
    message: str
    bootstrap: Path | None = None
    blobs: list[str] = field(default_factory=list)
    new_blobs: list[dict] = field(default_factory=list)
    kept_blobs: list[str] = field(default_factory=list)
    deletable_blobs: list[str] = field(default_factory=list)
    plan_digest: str = ""
    run_id: int | None = None
    resumes: int = 0
    images: list[dict] = field(default_factory=list)  # per image: source, bootstrap, blobs

    def output_document(self) -> dict:
        """The output JSON: upstream-compatible version/bootstrap/blobs (of the first image), plus
        what changed; a fleet plan adds `images` with every image's new bootstrap and blob table."""
        doc = {
            "version": version(),
            "bootstrap": str(self.bootstrap) if self.bootstrap else None,
            "blobs": self.blobs,
            "new_blobs": self.new_blobs,
            "kept_blobs": self.kept_blobs,
            "deletable_blobs": self.deletable_blobs,
            "plan_digest": self.plan_digest,
        }
        if len(self.images) > 1:
            doc["images"] = self.images
        return doc


def stale_reasons(
    plan: Plan, backend: BlobBackend, backend_config: BackendConfig, hashes: list[str] | None = None
) -> list[str]:
    """Everything that differs between the plan's recorded inputs and the inputs now.

    ``hashes``: the images' bootstraps' sha256 as loaded (else each file is hashed here)."""
    reasons = []
    for k, im in enumerate(plan.images):
        path = plan.locate(im.path)
        if not path.is_file():
            reasons.append(f"bootstrap {path} is gone")
        elif (hashes[k] if hashes is not None else bootstrap_sha256(path)) != im.sha256:
            reasons.append(f"bootstrap {path} changed (sha256 differs)")
    if plan.chunk_dict is not None:
        path = plan.locate(plan.chunk_dict.path)
        if not path.is_file() or bootstrap_sha256(path) != plan.chunk_dict.sha256:
            reasons.append(f"chunk dict {path} changed or is gone")
    try:
        cfg_bytes = canonical_json(CompactConfig(**plan.config))
    except (TypeError, PlanError) as exc:
        reasons.append(f"config section is invalid ({exc})")
    else:
        if hashlib.sha256(cfg_bytes).hexdigest() != plan.config_sha256:
            reasons.append("config section was edited (config_sha256 differs); edit decisions, not the config")
    # Local paths compare as absolute paths: the plan stores them relative to itself.
    planned = map_local_paths(plan.backend, lambda p: os.path.abspath(plan.locate(p)))
    if backend_config.fingerprint(os.path.abspath) != planned:
        reasons.append("the backend differs from the one the plan was made with")
    for b in plan.blobs:
        if b.observed_size is None:
            continue
        try:
            now = backend.blob_size(b.blob_id)
        except BlobNotFoundError:  # an unreachable or refusing backend is an error, not staleness
            reasons.append(f"blob {b.blob_id} is gone from the backend")
            continue
        if now != b.observed_size:
            reasons.append(f"blob {b.blob_id} is now {now} bytes, the plan saw {b.observed_size}")
    return reasons


def _refuse_stale(source_name: str, reasons: list[str]) -> None:
    if reasons:
        raise ApplyError(f"{source_name}: plan is stale: {'; '.join(reasons)}; run `compact plan` again")


@dataclass
class Prepared:
    layout: Layout
    union: Union
    sources: list[SourceBlob]  # E as policy facts
    infos: list[BlobInfo]  # E as blob-table entries: the images' tables united, then dict blobs
    paths: list[str]  # the source bootstraps, in plan order


def prepare(plan: Plan, source_name: str, images: list[Bootstrap], in_place: bool = False) -> Prepared:
    """Recompute the recipe from the plan's decisions and refuse any that lose a chunk.

    ``in_place``: the images' chunk records get their new locations (see ``layout``), for a caller
    that needs the old ones no more."""
    dict_bs = load_bootstrap(plan.locate(plan.chunk_dict.path)) if plan.chunk_dict is not None else None
    union, _, result = relayout(plan, source_name, images, dict_bs, in_place)
    facts = union.facts
    sources = list(facts.blobs)
    first_seen: dict[str, BlobInfo] = {}
    for bs in images:
        for info in bs.blobs:
            first_seen.setdefault(info.blob_id, info)
    infos = [first_seen[b.blob_id] for b in sources]
    if dict_bs is not None:
        ids = {b.blob_id for b in sources}
        for fact, info in zip(facts.chunk_dict.blobs, dict_bs.blobs):
            if fact.blob_id not in ids:
                ids.add(fact.blob_id)
                sources.append(fact)
                infos.append(info)
    return Prepared(result, union, sources, infos, [str(plan.locate(im.path)) for im in plan.images])


def output_paths(plan: Plan, opts: ApplyOptions) -> list[Path]:
    """Where each image's new bootstrap goes: -O (one image), --output-dir, or the plan's choice."""
    if opts.output_bootstrap is not None:
        if len(plan.images) != 1:
            raise ApplyError("-O names one output; this plan has several images: use --output-dir")
        return [opts.output_bootstrap]
    if opts.output_dir is None:
        return [plan.locate(im.output) for im in plan.images]
    names = [Path(im.path).name for im in plan.images]
    clash = len(set(names)) != len(names)
    # Sources with the same file name (a/image.boot, b/image.boot) keep their plan order as a prefix.
    return [opts.output_dir / (f"{k}-{n}" if clash else n) for k, n in enumerate(names)]


def apply_plan(
    plan: Plan,
    recorded_digest: str | None,
    opts: ApplyOptions,
    backend: BlobBackend,
    backend_config: BackendConfig,
    store: Store,
    progress: Progress | None = None,
) -> ApplyResult:
    source_name = str(opts.plan_path)
    digest = plan.digest
    if not plan.images:
        raise ApplyError(f"{source_name}: the plan names no image")
    out_boots = output_paths(plan, opts)
    _check_output_paths(plan, opts, out_boots, store.path)

    phase = progress or (lambda label, done, total: None)
    phase("checking the plan's inputs", 0, 0)
    if not plan.summary.changes:
        _refuse_stale(source_name, stale_reasons(plan, backend, backend_config))
        return ApplyResult("no-changes", f"nothing to do: {plan.summary.noop_reason}", plan_digest=digest)
    # The bootstraps are hashed as they are loaded: what is checked is what is used.
    phase("loading the source bootstraps", 0, 0)
    try:
        loaded = [load_bootstrap_hashed(plan.locate(im.path)) for im in plan.images]
    except (OSError, RafsFormatError):
        # Gone, or no longer a bootstrap: if it changed since the plan, that is what to say.
        _refuse_stale(source_name, stale_reasons(plan, backend, backend_config))
        raise
    _refuse_stale(source_name, stale_reasons(plan, backend, backend_config, [sha for _, sha in loaded]))
    images = [bs for bs, _ in loaded]
    del loaded
    _return_freed_memory()
    phase("re-validating the plan's decisions", 0, 0)
    # The new blobs are copied from the layout's recipes, so the source records take their new
    # locations at once: apply never holds a second array as long as the chunk table.
    prep = prepare(plan, source_name, images, in_place=True)
    # Only the layout's relocated occurrences are used from here on: drop the sources' and the
    # union's references (the union's own copy, for a fleet), each as large as the chunk table.
    images = [replace(bs, chunks=empty_chunks()) for bs in images]
    prep.union = replace(prep.union, facts=replace(prep.union.facts, chunks=empty_chunks()))
    _return_freed_memory()
    result, sources = prep.layout, prep.sources
    # A single image keeps the plain step and output names ("bootstrap"); a fleet numbers them.
    keys = ["bootstrap"] if len(images) == 1 else [f"bootstrap:{k}" for k in range(len(images))]
    boots = dict(zip(keys, out_boots))
    outputs = {k: str(p.resolve()) for k, p in boots.items()} | {"blobs_dir": str(opts.blobs_dir.resolve())}
    inputs = {k.replace("bootstrap", "bootstrap_sha256"): im.sha256 for k, im in zip(keys, plan.images)}
    if opts.output_dir is not None:
        opts.output_dir.mkdir(parents=True, exist_ok=True)
    opts.blobs_dir.mkdir(parents=True, exist_ok=True)
    with blobs_dirs_locked(opts.blobs_dir, _local_dirs(backend)):
        tmp = temp_prefix(digest)
        previous = find_run(store, digest)
        if previous is not None and previous.status == RUN_SUCCEEDED and previous.outputs == outputs:
            done = completed_steps(store, previous.id)
            if not _check_outputs(done, opts.blobs_dir, boots):
                res = _result_from_steps(previous, done, digest, boots, prep)
                if opts.output_json is not None:
                    _write_json(opts.output_json, res, tmp, only_if_changed=True)
                return res
            # Outputs vanished or changed since: redo the run from scratch.
        # A killed run leaves its temp files beside each output, not only in the blobs dir.
        out_dirs = [opts.blobs_dir, *(p.parent for p in out_boots)] + (
            [opts.output_json.parent] if opts.output_json and not is_stdout(opts.output_json) else []
        )
        for directory in dict.fromkeys(d.resolve() for d in out_dirs):
            remove_stale_temps(directory, prefix=tmp)
        run = start_run(store, digest, outputs=outputs, inputs=inputs)
        checkpoints = Checkpoints(store, run.id)
        try:
            src = images[0]
            job = CopyJob(
                sources, backend, opts.blobs_dir, src.version, src.chunk_size, digest,
                whole_file_id=plan.flags.i2_whole_file_id or src.version == 5,
                check=SourceCheck(_user_of(prep, images), os.cpu_count() or 1) if opts.verify_sources else None,
                tee=opts.blob_tee,
            )
            written = _write_blobs(prep, job, checkpoints, opts.jobs, progress)
            _publish_blobs(backend, result, written, checkpoints)
            done = checkpoints.done()
            # Each image's records, already relocated, are renumbered in place to its own blob
            # table (once: the layout's locations are views of them), and the layout's
            # per-occurrence arrays go before any bootstrap is serialised.
            projections = [project(prep.union, result, k, in_place=True) for k in range(len(boots))]
            result = prep.layout = result.without_occurrences()
            _return_freed_memory()
            tables = [proj.table for proj in projections]
            for k, ((key, out_boot), proj) in enumerate(zip(boots.items(), projections)):
                phase(f"writing bootstrap {out_boot.name}", 0, 0)
                new_bs = _new_bootstrap(images[k], proj, written, prep.infos)
                _check_table(new_bs, written, backend)
                data = serialize_bootstrap(new_bs)
                step = done.get(key)
                if step is None or not same_file(out_boot, step.size, step.sha256) or _sha256(data) != step.sha256:
                    checkpoints.start(key)
                    boot_sha = _write_bootstrap(out_boot, data, tmp + key.replace(":", "-"))
                    fault_point("bootstrap-done")
                    checkpoints.finish(key, bytes=data.size, size=data.size, sha256=boot_sha)
                del new_bs, data  # the next image's are built without these beside them
            res = _result(run.id, run.resumes, written, digest, boots, prep, tables)
            if opts.output_json is not None:
                doc = _write_json(opts.output_json, res, tmp)
                checkpoints.finish("json", size=len(doc), sha256=hashlib.sha256(doc).hexdigest())
                fault_point("json-done")
            finish_run(store, run.id, RUN_SUCCEEDED)
        except BaseException:
            finish_run(store, run.id, RUN_FAILED)
            raise
    res.status = "resumed" if run.resumes else "applied"
    res.message = _summary(res)
    if recorded_digest is not None and recorded_digest != digest:
        res.message += " (the plan was edited after `compact plan`; its decisions were re-validated)"
    return res


def _check_output_paths(plan: Plan, opts: ApplyOptions, out_boots: list[Path], state: Path) -> None:
    """No output may land on an input (anything the plan names, the plan, the state store), on a
    blob file, on a special file, nor two outputs on one file (safeio's output guard)."""
    guard = plan_guard(plan, opts.plan_path, state, outputs_are_inputs=False)
    guard.blob_dir(opts.blobs_dir, "the new blobs dir (--blobs-dir)")
    for out in out_boots:
        flag = "-O" if opts.output_bootstrap is not None else "--output-dir" if opts.output_dir else "images[].output"
        guard.output(out, f"the new bootstrap ({flag})")
    if opts.output_json is not None and not is_stdout(opts.output_json):
        guard.output(opts.output_json, "the result JSON (--output-json)")


def _return_freed_memory() -> None:
    """Hand the pages of freed temporaries back to the system between apply's phases.

    Once glibc has freed one large array it raises its mmap threshold, so later arrays of that
    size come from the heap, whose free pages it keeps: each phase's peak would then sit on top of
    the previous phase's leftovers. Without glibc (musl, macOS) this does nothing."""
    import ctypes  # only here: nothing else on apply's path needs it

    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _local_dirs(backend: BlobBackend) -> list[Path]:
    """The directories a local backend reads blobs from (locked while apply runs)."""
    if not isinstance(backend, LocalFsBackend):
        return []
    return [d for d in (backend.dir, *backend.alt_dirs) if d is not None]


def _check_table(bs: Bootstrap, written: dict[int, WrittenBlob], backend: BlobBackend) -> None:
    """Every blob of a new bootstrap's table is there with its size, right before the bootstrap
    that names them is written (a blob deleted meanwhile would make the image unreadable)."""
    new = {wb.info.blob_id: wb for wb in written.values()}
    for info in bs.blobs:
        wb = new.get(info.blob_id)
        try:
            size = wb.path.stat().st_size if wb is not None else backend.blob_size(info.blob_id)
        except (OSError, BlobNotFoundError):
            size = None
        where = wb.path if wb is not None else f"blob {info.blob_id}"
        if size is None:
            raise ApplyError(f"{where} is gone (deleted while apply ran?); the new bootstrap was not written, rerun apply")
        too_short = size != info.compressed_size if wb is not None else size < info.compressed_size
        if too_short:
            raise ApplyError(
                f"{where} is {size} bytes, its blob-table entry says {info.compressed_size}; "
                "the new bootstrap was not written"
            )


def _check_outputs(done: dict, blobs_dir: Path, boots: dict[str, Path]) -> list[str]:
    problems = []
    for key, step in done.items():
        if key.startswith("blob:") and not same_file(blobs_dir / step.blob_id, step.size, step.sha256):
            problems.append(f"{blobs_dir / step.blob_id} is missing or changed")
        if key in boots and not same_file(boots[key], step.size, step.sha256):
            problems.append(f"{boots[key]} is missing or changed")
    return problems


@dataclass
class Checkpoints:
    """One apply run's steps in the state store: what is done, and recording what gets done.

    A step key names one output: ``blob:gN`` (a new blob), ``upload:gN``, ``bootstrap`` (or
    ``bootstrap:K`` in a fleet), ``json``."""

    store: Store
    run_id: int

    def done(self) -> dict:
        return completed_steps(self.store, self.run_id)

    def start(self, key: str, **fields) -> None:
        record_step(self.store, self.run_id, key, STEP_RUNNING, **fields)

    def finish(self, key: str, status: str = STEP_DONE, **fields) -> None:
        record_step(self.store, self.run_id, key, status, **fields)

    def written_blob(self, nb: NewBlob, step, out_dir: Path, chunk_size: int) -> WrittenBlob | None:
        """The new blob a previous attempt finished, if its file is still intact."""
        if step is None or not same_file(out_dir / step.blob_id, step.size, step.sha256):
            return None
        info = _info_from_step(nb, step, chunk_size, out_dir)
        return WrittenBlob(info, out_dir / step.blob_id, step.sha256, 0, 0, True)


def _write_blobs(
    prep: Prepared, job: CopyJob, checkpoints: Checkpoints, jobs: int, progress: Progress | None
) -> dict[int, WrittenBlob]:
    done = checkpoints.done()
    written: dict[int, WrittenBlob] = {}
    todo: list[NewBlob] = []
    for nb in prep.layout.new_blobs:
        wb = checkpoints.written_blob(nb, done.get(f"blob:g{nb.group}"), job.out_dir, job.chunk_size)
        if wb is not None:
            written[nb.group] = wb
        else:
            todo.append(nb)
    total = sum(int(nb.reads["length"].sum()) for nb in todo)
    copied = [0]
    lock = threading.Lock()

    def advance(n: int) -> None:
        with lock:
            copied[0] += n
            if progress is not None:
                progress("copying chunks", copied[0], total)

    job.progress = advance
    advance(0)
    for nb in todo:
        checkpoints.start(f"blob:g{nb.group}")
    pool = ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="new-blob")
    futures: list[Future] = []
    try:
        # Inside the try: a signal can land while the first blobs already run.
        futures.extend(pool.submit(write_new_blob, nb, job) for nb in todo)
        for nb, future in zip(todo, futures):
            wb = _wait(future)
            fault_point(f"blob-done:g{nb.group}")
            checkpoints.finish(
                f"blob:g{nb.group}", STEP_SKIPPED if wb.reused else STEP_DONE,
                bytes=wb.info.compressed_size, requests=wb.requests, blob_id=wb.info.blob_id,
                size=wb.info.compressed_size, sha256=wb.sha256, detail=_info_detail(wb.info),
            )
            written[nb.group] = wb
    except BaseException as exc:
        # The other copies stop at their next read and remove their temp files.
        job.cancel.set()
        pool.shutdown(wait=True, cancel_futures=True)
        if isinstance(exc, SourceCorruptError):
            # A corrupt source publishes nothing, not even the new blobs that were sound.
            for future in futures:
                if future.done() and not future.cancelled() and future.exception() is None:
                    if not future.result().reused:
                        future.result().path.unlink(missing_ok=True)
        raise
    finally:
        pool.shutdown()
        if job.check is not None:
            job.check.close()
    return written


def _wait(future: Future) -> WrittenBlob:
    """The future's result, waking up often: a signal delivered to a worker thread is only acted
    upon once the main thread runs Python code again, and Ctrl-C must not wait for a whole blob."""
    while True:
        try:
            return future.result(timeout=SIGNAL_CHECK)
        except FutureTimeout:
            continue


def _user_of(prep: Prepared, images: list[Bootstrap]) -> Callable[[int], str]:
    """The path of a file that uses a union occurrence, for messages about a chunk."""

    def user_of(occurrence: int) -> str:
        for k, (start, end) in enumerate(prep.union.slices):
            if start <= occurrence < end:
                return f"{path_of_occurrence(images[k], occurrence - start)} in {prep.paths[k]}"
        return "the chunk dict"

    return user_of


def _publish_blobs(
    backend: BlobBackend, result: Layout, written: dict[int, WrittenBlob], checkpoints: Checkpoints
) -> None:
    """Upload new blobs to a backend that serves them (a registry); checkpointed per group."""
    if not backend.accepts_uploads:
        return
    done = checkpoints.done()
    for nb in result.new_blobs:
        key = f"upload:g{nb.group}"
        wb = written[nb.group]
        step = done.get(key)
        if step is not None and step.blob_id == wb.info.blob_id:
            continue
        checkpoints.start(key, blob_id=wb.info.blob_id)
        uploaded = backend.upload_blob(wb.info.blob_id, wb.path)
        fault_point(f"upload-done:g{nb.group}")
        checkpoints.finish(
            key, STEP_DONE if uploaded else STEP_SKIPPED, bytes=wb.info.compressed_size if uploaded else 0,
            blob_id=wb.info.blob_id, size=wb.info.compressed_size, sha256=wb.sha256,
            detail="uploaded" if uploaded else "already present in the backend",
        )


def _info_detail(info: BlobInfo) -> str:
    """Blob-table fields a resumed run needs to rebuild the entry without rereading the blob."""
    return json.dumps(
        {
            "uncompressed_size": info.uncompressed_size,
            "chunk_count": info.chunk_count,
            "features": info.features,
            "ci_compressor": info.ci_compressor,
            "ci_offset": info.ci_offset,
            "ci_compressed_size": info.ci_compressed_size,
            "ci_uncompressed_size": info.ci_uncompressed_size,
        },
        sort_keys=True,
    )


def _info_from_step(nb: NewBlob, step, chunk_size: int, blobs_dir: Path) -> BlobInfo:
    try:
        d = json.loads(step.detail or "")
    except json.JSONDecodeError:
        raise ApplyError(f"state store: checkpoint of blob:g{nb.group} is incomplete; delete {blobs_dir / step.blob_id} and rerun") from None
    return BlobInfo(
        blob_id=step.blob_id, compressed_size=step.size, compressor=nb.compressor, digester=nb.digester,
        chunk_size=chunk_size, **d,
    )


def _new_bootstrap(
    src: Bootstrap, proj: ImageProjection, written: dict[int, WrittenBlob], infos: list[BlobInfo]
) -> Bootstrap:
    """The source tree with relocated chunks and its new blob table; everything else unchanged."""
    blobs = [written[e.group].info if e.group is not None else infos[e.source] for e in proj.table]
    blobs = [replace(b, chunk_size=src.chunk_size) if src.version == 5 else b for b in blobs]
    return replace(src, blobs=blobs, chunks=proj.chunks)


def _write_json(path: Path, res: ApplyResult, tmp_prefix: str, only_if_changed: bool = False) -> bytes:
    """The output JSON (``-``: stdout); a rerun of a finished plan rewrites it only if it is missing or differs."""
    doc = json.dumps(res.output_document(), indent=2, sort_keys=True).encode() + b"\n"
    if is_stdout(path):
        sys.stdout.write(doc.decode())
        sys.stdout.flush()
    elif not (only_if_changed and same_file(path, len(doc), hashlib.sha256(doc).hexdigest())):
        with atomic_writer(path, tmp_name=tmp_prefix + "json") as fp:
            fp.write(doc)
    return doc


def _write_bootstrap(path: Path, data: Serialized, tmp_name: str) -> str:
    """Write ``data`` part by part, hashing as it goes; returns its sha256 (hex).

    Around the page cache, like the new blobs: apply does not read it back, and filling fresh
    cache pages costs more than serialising the parts (safeio.direct)."""
    sha = hashlib.sha256()
    half, at = data.size // 2, 0
    with atomic_writer(path, tmp_name=tmp_name, direct=True) as fp:
        for part in data.parts():
            view = memoryview(part)
            if at <= half < at + len(view):  # the crash tests' point: a half-written temp file
                fp.write(view[: half - at])
                fault_point("bootstrap-mid")
                fp.write(view[half - at :])
            else:
                fp.write(view)
            sha.update(view)
            at += len(view)
    return sha.hexdigest()


def _sha256(data: Serialized) -> str:
    sha = hashlib.sha256()
    for part in data.parts():
        sha.update(part)
    return sha.hexdigest()


def _result(
    run_id, resumes, written, digest, boots: dict[str, Path], prep: Prepared, tables: list[list[TableEntry]]
) -> ApplyResult:
    """``tables``: each image's projected blob table (projecting again would copy its chunks)."""
    result = prep.layout

    def blob_id(e) -> str:
        return written[e.group].info.blob_id if e.group is not None else e.blob_id

    ids = [blob_id(e) for e in result.table]
    new = [
        {"group": f"g{e.group}", "blob_id": written[e.group].info.blob_id,
         "size": written[e.group].info.compressed_size, "chunk_count": written[e.group].info.chunk_count}
        for e in result.table
        if e.group is not None
    ]
    kept = [e.blob_id for e in result.table if e.group is None]
    deletable = list(dict.fromkeys(b.blob_id for b in prep.sources if b.blob_id not in ids))
    images = [
        {"source": str(src), "bootstrap": str(out), "blobs": [blob_id(e) for e in table]}
        for src, out, table in zip(prep.paths, boots.values(), tables)
    ]
    first = images[0]
    return ApplyResult(
        "applied", "", Path(first["bootstrap"]), first["blobs"], new, kept, deletable, digest, run_id, resumes, images
    )


def _result_from_steps(run, done, digest, boots: dict[str, Path], prep: Prepared) -> ApplyResult:
    written = {}
    for nb in prep.layout.new_blobs:
        step = done[f"blob:g{nb.group}"]
        info = BlobInfo(step.blob_id, nb.chunk_count, step.size, 0, 0, nb.compressor, nb.digester, 0)
        written[nb.group] = WrittenBlob(info, Path(step.blob_id), step.sha256, 0, 0, True)
    tables = [project(prep.union, prep.layout, k).table for k in range(len(boots))]
    res = _result(run.id, run.resumes, written, digest, boots, prep, tables)
    res.status = "already-applied"
    outs = ", ".join(str(p) for p in boots.values())
    res.message = f"already applied (run {run.id}); outputs checked: {plural(len(written), 'new blob')} and {outs} are intact"
    return res


def _summary(res: ApplyResult) -> str:
    verb = "resumed and applied" if res.status == "resumed" else "applied"
    where = f"bootstrap {res.bootstrap}" if len(res.images) <= 1 else plural(len(res.images), "bootstrap")
    return (
        f"{verb}: {plural(len(res.new_blobs), 'new blob')}, {len(res.kept_blobs)} kept, "
        f"{len(res.deletable_blobs)} deletable; {where}"
    )
