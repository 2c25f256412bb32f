"""The policy's switches: reference semantics R or the improvements I1–I5 (compact.md §1.15, §6.3).

A plan records them (its ``flags:`` header) and apply decides again under the same ones.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .errors import PlanError

# A v6 chunk-info table in format v1 holds at most 16 MiB / 16 bytes of entries (compact.md I5).
CI_V1_MAX_ENTRIES = 1 << 20

V6_KEYS = ("offset", "digest")


@dataclass(frozen=True, slots=True)
class Flags:
    """Switches between reference semantics R and the improvements I1–I5 (compact.md §1.15, §6.3)."""

    i1_drop_unused_dict_blobs: bool = False
    i2_whole_file_id: bool = False
    i3_report_no_changes: bool = False
    i4_compatible_merges_only: bool = False
    i5_chunk_cap: int | None = None  # max chunks per new blob; None: no cap (B15)
    ratio_u8_wrap: bool = False  # B14: `as u8` truncation of the used ratio
    v6_key: str = "offset"  # v2.2.0 keys v6 chunks by location; HEAD by digest

    def __post_init__(self) -> None:
        if self.v6_key not in V6_KEYS:
            raise PlanError(f"v6_key: expected one of {', '.join(V6_KEYS)}, got {self.v6_key!r}")
        cap = self.i5_chunk_cap
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
            raise PlanError(f"i5_chunk_cap: expected a positive integer or None, got {cap!r}")

    @classmethod
    def tool_default(cls) -> "Flags":
        return cls(
            i2_whole_file_id=True,
            i3_report_no_changes=True,
            i4_compatible_merges_only=True,
            i5_chunk_cap=CI_V1_MAX_ENTRIES,
        )

    @classmethod
    def upstream_oracle(cls) -> "Flags":
        return cls()

    def describe(self) -> dict[str, bool | int | str | None]:
        """Plan-header form: every switch by name, keys sorted."""
        return dict(sorted(asdict(self).items()))
