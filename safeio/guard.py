"""One output guard for every writer: nothing the user did not name is overwritten.

A command registers what it reads (``guard.input``) and the directories whose blob files it
cannot attribute (``guard.blob_dir``), then claims each output before writing it
(``guard.output``). An output is refused, with one line naming it, when it

* exists and is not a regular file (a device node, FIFO, socket or directory): the atomic
  rename would replace the node itself, as root even ``/dev/null``;
* is the same file as an input or an output claimed before it: same resolved path (symlinks
  followed, also in its directories) or same ``st_dev``/``st_ino`` (hard links);
* lies in a blob directory under a blob-like name (64 hex digits): a blob of some image.

The one sanctioned exception: ``output(..., rewrites_input=True)`` for a file a command reads
and then deliberately replaces (an OCI layout's ``index.json`` re-tagged by `compact image`).

Example::

    guard = OutputGuard()
    guard.input(bootstrap, "the source bootstrap")
    guard.blob_dir(blobs_dir, "the blobs dir")
    out = guard.output(args.output, "the plan (-o)")  # raises OutputRefusedError
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import OutputRefusedError

# A blob file name: sha256 hex, the id every nydus blob store uses.
BLOB_NAME = re.compile(r"^[0-9a-f]{64}$")
# Where a text output may say "-": stdout.
STDOUT = "-"


def is_stdout(path: str | Path | None) -> bool:
    return path is not None and str(path) == STDOUT


@dataclass(frozen=True)
class _Known:
    what: str
    resolved: Path
    ident: tuple[int, int] | None  # (st_dev, st_ino) when the file exists


def _identify(path: str | Path, what: str) -> _Known:
    resolved = Path(os.path.realpath(path))
    try:
        st = os.stat(resolved)
    except (FileNotFoundError, NotADirectoryError):
        return _Known(what, resolved, None)
    return _Known(what, resolved, (st.st_dev, st.st_ino))


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device node"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def check_regular(path: str | Path, what: str) -> None:
    """Refuse a path that exists and is not a regular file (symlinks followed).

    For files opened in place rather than replaced (the SQLite state store): opening a FIFO
    would block forever and writing a device would write the device."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return
    if not stat.S_ISREG(st.st_mode):
        raise OutputRefusedError(f"{path}: {what} would go there, but it is {_kind(st.st_mode)}; refusing to replace it")


@dataclass
class OutputGuard:
    """The inputs and outputs of one command; see the module docstring."""

    _inputs: list[_Known] = field(default_factory=list)
    _outputs: list[_Known] = field(default_factory=list)
    _blob_dirs: list[tuple[Path, str]] = field(default_factory=list)

    def input(self, path: str | Path | None, what: str) -> OutputGuard:
        """A file the command reads (it need not exist yet). None is ignored."""
        if path is not None and not is_stdout(path):
            self._inputs.append(_identify(path, what))
        return self

    def inputs(self, paths: Iterable[str | Path], what: str) -> OutputGuard:
        for p in paths:
            self.input(p, what)
        return self

    def blob_dir(self, directory: str | Path | None, what: str) -> OutputGuard:
        """A directory of blobs: files named like a blob id there are never outputs."""
        if directory is not None:
            self._blob_dirs.append((Path(os.path.realpath(directory)), what))
        return self

    def output(self, path: str | Path, what: str, *, rewrites_input: bool = False) -> Path:
        """Claim ``path`` for ``what`` (say which option: "the plan (-o)"); raise OutputRefusedError
        if writing it would lose something. Returns the path unchanged, for chaining."""
        path = Path(path)
        check_regular(path, what)
        known = _identify(path, what)
        others = self._outputs if rewrites_input else self._inputs + self._outputs
        for other in others:
            if other.resolved == known.resolved or (known.ident is not None and other.ident == known.ident):
                raise OutputRefusedError(f"{path}: is {other.what}; refusing to overwrite it with {what}")
        for directory, dir_what in self._blob_dirs:
            if known.resolved.parent == directory and BLOB_NAME.match(known.resolved.name):
                raise OutputRefusedError(
                    f"{path}: is named like a blob in {dir_what}; refusing to write {what} there"
                )
        self._outputs.append(known)
        return path

    def outputs(self, paths: Iterable[str | Path], what: str) -> list[Path]:
        return [self.output(p, what) for p in paths]
