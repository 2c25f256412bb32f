"""The plan file: a YAML rendering of `Plan` made for code review, and its strict reader.

Rendering goes through a jinja2 template (templates/plan.yaml.j2) so the file carries comments
a reviewer reads; every value is emitted as JSON, which is valid YAML, so the template cannot
produce an ambiguous scalar. Loading is YAML's safe schema followed by a type check driven by the
dataclass annotations, which reports the exact key path of the first problem.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

from nydus_compact.safeio import atomic_write_text
from nydus_compact.templates import environment

from .errors import PlanError, PlanFileError
from .formatting import count_merge_text, human_size, summary_line
from .plan import FORMAT, MaxBlobs, Plan, PlanBlob
from .vocab import Reason

if TYPE_CHECKING:
    import jinja2

MAX_PLAN_BYTES = 256 * 1024 * 1024


class AliasRefusedError(yaml.YAMLError):
    """The document uses a YAML anchor or alias."""

    def __init__(self, mark: yaml.Mark) -> None:
        super().__init__("anchor or alias")
        self.problem_mark = mark


class _NoAliasComposer(Composer):
    """Refuses anchors and aliases while composing, before anything is expanded: a plan the tool
    writes has none, and a few KB of nested aliases expand to gigabytes (a "billion laughs")."""

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        event = self.peek_event()
        if isinstance(event, AliasEvent) or getattr(event, "anchor", None) is not None:
            raise AliasRefusedError(event.start_mark)
        return super().compose_node(parent, index)


class _ReferenceLoader(Reader, Scanner, Parser, _NoAliasComposer, SafeConstructor, Resolver):
    def __init__(self, stream: str) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        _NoAliasComposer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)


def _safe_loader() -> type:
    """The reference loader with libyaml's parser when PyYAML has it (about 5 times faster).

    The composer stays PyYAML's Python one: libyaml's composer recurses in C, so deeply nested
    input would overflow the C stack instead of raising the RecursionError reported below."""
    try:
        from yaml._yaml import CParser
    except ImportError:
        return _ReferenceLoader

    class PlanLoader(_NoAliasComposer, CParser, SafeConstructor, Resolver):
        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            _NoAliasComposer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)

    return PlanLoader


_LOADER = _safe_loader()


def safe_yaml(text: str) -> object:
    """Any YAML the tool reads: the safe schema, no anchors or aliases (AliasRefusedError)."""
    try:
        return yaml.load(text, Loader=_LOADER)
    except AliasRefusedError:
        raise
    except yaml.YAMLError:
        # libyaml words some problems differently: the reference loader gives the message shown.
        return yaml.load(text, Loader=_ReferenceLoader)


def explain_blob(b: PlanBlob, limit: MaxBlobs | None = None) -> str:
    """One line a reviewer reads above each blob block."""
    used = f"uses {human_size(b.used_bytes)}"
    if b.size_for_ratio:
        used += f" of {human_size(b.size_for_ratio)} ({b.ratio}%)"
    # The source bootstrap may still point into an UNREFERENCED blob: its chunks won elsewhere
    # (the chunk dict, or an earlier copy), so the new image no longer needs it.
    unreferenced = "no file references it"
    if b.referenced_by:
        unreferenced = "every chunk files use from it is served by another blob"
    text = {
        Reason.UNREFERENCED: unreferenced,
        Reason.KEEP: f"kept; {used}",
        Reason.KEEP_UNSUPPORTED: f"kept; {used}; its kind (ZRAN, SEPARATE or inlined meta) is never rewritten",
        Reason.DICT_KEEP: "chunk-dict blob, kept as is",
        Reason.DICT_UNUSED: "chunk-dict blob no file uses, dropped",
        Reason.REBUILD_RATIO: f"{used}, below the threshold: rebuilt",
        Reason.MERGE_TARGET: f"merge target of {b.group}; {used}",
        Reason.MERGED_INTO: f"merged into {b.group}; {used}",
        Reason.MERGE_FOR_COUNT: f"{count_merge_text(limit.limit if limit else None, limit.exact if limit else True)}"
        f" (into {b.group}); {used}",
    }.get(b.reason, b.reason)
    return f"{b.decision}: {text}"


def _env() -> jinja2.Environment:
    return environment(
        {"y": lambda v: json.dumps(v, ensure_ascii=True), "human": human_size, "explain": explain_blob},
        autoescape=False,
        trim_blocks=False,
    )


def render(plan: Plan, plan_path: str = "plan.yaml") -> str:
    template = _env().get_template("plan.yaml.j2")
    return template.render(plan=plan, digest=plan.digest, plan_path=plan_path, summary_line=summary_line(plan))


def write_plan(plan: Plan, path: Path) -> None:
    atomic_write_text(path, render(plan, str(path)))


def load_plan(path: Path) -> tuple[Plan, str | None]:
    """Read and validate a plan file. Returns the plan and the digest recorded in it."""
    try:
        size = path.stat().st_size
        if size > MAX_PLAN_BYTES:
            raise PlanFileError(f"{path}: {size} bytes is too large for a plan file")
        raw = safe_yaml(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PlanFileError(f"{path}: cannot read plan: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise PlanFileError(f"{path}: not a plan: binary data, while a plan is the YAML text `compact plan` writes") from None
    except AliasRefusedError as exc:
        mark = exc.problem_mark
        raise PlanFileError(
            f"{path}: line {mark.line + 1}, column {mark.column + 1}: YAML anchors and aliases (&name, *name) "
            "are not allowed in a plan (the plans compact writes have none)"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise PlanFileError(f"{path}: not valid YAML{where}: {problem}") from None
    except RecursionError:  # the composer builds nested collections recursively
        raise PlanFileError(f"{path}: not a plan: collections nested too deeply") from None
    plan, recorded = plan_from_data(raw, str(path))
    plan.base_dir = path.parent
    return plan, recorded


def plan_from_data(raw: object, source: str) -> tuple[Plan, str | None]:
    if not isinstance(raw, dict):
        raise PlanFileError(f"{source}: not a nydus-compact plan (expected a mapping at the top)")
    if "format" not in raw:
        raise PlanFileError(f"{source}: not a nydus-compact plan (it has no `format: {FORMAT}` line)")
    if raw.get("format") != FORMAT:
        raise PlanFileError(f"{source}: format: expected {FORMAT!r}, got {raw.get('format')!r}")
    data = dict(raw)
    recorded = data.pop("plan_digest", None)
    if recorded is not None and not isinstance(recorded, str):
        raise PlanFileError(f"{source}: plan_digest: expected a string")
    plan = _convert(Plan, data, "", source)
    return plan, recorded


@functools.cache
def _schema(tp: type) -> tuple[dict[str, object], dict[str, dataclasses.Field]]:
    """A plan dataclass's resolved annotations and in-file fields (resolving them each time was
    a third of loading a 128-blob plan)."""
    fields = {f.name: f for f in dataclasses.fields(tp) if f.metadata.get("in_file", True)}
    return typing.get_type_hints(tp), fields


def _convert(tp: object, value: object, key: str, source: str) -> object:
    """Check ``value`` against the annotation ``tp`` and build dataclasses; errors carry the key path."""

    def fail(expected: str) -> typing.NoReturn:
        raise PlanFileError(f"{source}: {key or '<top>'}: expected {expected}, got {_preview(value)}")

    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        real = [o for o in options if o is not type(None)]
        if len(real) == 1:
            return _convert(real[0], value, key, source)
        for option in real:
            try:
                return _convert(option, value, key, source)
            except PlanFileError:
                continue
        nullable = " or null" if len(real) < len(options) else ""
        fail(" or ".join(_EXPECTED[typing.get_origin(o) or o] for o in real) + nullable)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            fail(f"a mapping ({tp.__name__})")
        hints, fields = _schema(tp)
        unknown = sorted(set(value) - set(fields), key=str)
        if unknown:
            raise PlanFileError(f"{source}: {_join(key, str(unknown[0]))}: unknown key")
        kwargs = {}
        for name, f in fields.items():
            if name not in value:
                if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
                    continue
                raise PlanFileError(f"{source}: {_join(key, name)}: missing")
            kwargs[name] = _convert(hints[name], value[name], _join(key, name), source)
        try:
            return tp(**kwargs)
        except PlanError as exc:  # the dataclass's own check (e.g. Flags.v6_key)
            raise PlanFileError(f"{source}: {key or '<top>'}: {exc}") from None
    if isinstance(tp, type) and issubclass(tp, enum.StrEnum):
        if isinstance(value, str) and value in tuple(tp):
            return tp(value)
        raise PlanFileError(f"{source}: {key}: expected one of {', '.join(tp)}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            fail("a list")
        (item,) = typing.get_args(tp)
        return [_convert(item, v, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list) or len(value) != len(args):
            fail(f"a list of {len(args)} values")
        return tuple(_convert(a, v, f"{key}[{i}]", source) for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, dict):
            fail("a mapping")
        kt, vt = typing.get_args(tp)
        return {
            _convert(kt, k, f"{key}.{k}", source): _convert(vt, v, _join(key, str(k)), source)
            for k, v in value.items()
        }
    if tp is bool:
        return value if isinstance(value, bool) else fail(_EXPECTED[bool])
    if tp is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else fail(_EXPECTED[int])
    if tp is str:
        return value if isinstance(value, str) else fail(_EXPECTED[str])
    raise AssertionError(f"unsupported annotation {tp!r}")


_EXPECTED = {bool: "true or false", int: "an integer", str: "a string", list: "a list"}


def _preview(value: object, limit: int = 60) -> str:
    """The start of ``value`` as JSON. Encoding is lazy, so a YAML alias bomb or a self-referencing
    list costs no more than the characters shown."""
    shown = ""
    try:
        for part in json.JSONEncoder(default=str).iterencode(value):
            shown += part
            if len(shown) > limit:
                return shown[: limit - 3] + "..."
    except ValueError:  # a circular reference
        return shown + "..."
    return shown


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name
