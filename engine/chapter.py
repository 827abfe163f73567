"""The chapter map: every testable statement of the chapter, where it is, and the claim rows that test it.

The map is data (configs/chapter/map.yaml); this module reads it, checks its shape, and says how well
each statement is covered by a set of claim rows. A statement is covered only by a judged row (kind
exact or measured, with a verdict) whose statistic measures it; descriptive and control rows show, they
do not cover. A statement whose rows leave part of it untested (`partly`) is partly covered."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .config import read_yaml
from .experiment import CONFIG_ROOT

MAP_PATH = CONFIG_ROOT / "chapter" / "map.yaml"
TESTS = ("exact", "measured", "untestable")
SECTIONS = (
    "§1", "§2", "§2.1", "§2.2", "§3", "§3.1", "§3.2", "§4", "§4.1", "§4.2", "§4.3", "§4.4", "§5", "§5.1",
    "§5.2", "§5.3", "§6",
)  # fmt: skip
FIELDS = {"n", "section", "lines", "eq", "says", "test", "rows", "shows", "partly", "pending", "note", "why", "open"}
JUDGED_KINDS = ("exact", "measured")

COVERED, PARTLY, NOT_COVERED, NOT_TESTABLE = "covered", "partly", "not covered", "not testable"


@dataclass(frozen=True)
class Statement:
    n: int
    section: str
    lines: str
    says: str
    test: str
    rows: tuple[str, ...] = ()
    shows: tuple[str, ...] = ()
    eq: str = ""
    partly: str = ""
    pending: int | None = None
    note: str = ""
    why: str = ""
    open: bool = False

    @property
    def coverage(self) -> str:
        """What the map declares: covered / partly / not covered (rows named or not), or not testable."""
        if self.test == "untestable":
            return NOT_TESTABLE
        if not self.rows:
            return NOT_COVERED
        return PARTLY if self.partly else COVERED


@dataclass(frozen=True)
class ChapterMap:
    statements: tuple[Statement, ...]
    not_statements: dict[str, str] = field(default_factory=dict)
    planned: dict[int, str] = field(default_factory=dict)  # pending key -> what is to add the rows

    def named(self) -> set[str]:
        """Every claim id the map names, as a test, a display, or a row that tests no statement."""
        return {r for s in self.statements for r in s.rows + s.shows} | set(self.not_statements)

    def counts(self) -> dict[str, int]:
        out = {COVERED: 0, PARTLY: 0, NOT_COVERED: 0, NOT_TESTABLE: 0}
        for s in self.statements:
            out[s.coverage] += 1
        return out

    def headline(self) -> str:
        """One sentence: how many of the chapter's testable statements have a verdict."""
        c, testable = self.counts(), sum(1 for s in self.statements if s.test != "untestable")
        return (
            f"{c[COVERED] + c[PARTLY]} of the chapter's {testable} testable statements have a verdict "
            f"({c[COVERED]} in full, {c[PARTLY]} in part); {c[NOT_COVERED]} have none yet"
        )


class MapError(ValueError):
    """The map file does not have the documented shape."""


def load(path: Path = MAP_PATH) -> ChapterMap:
    raw = read_yaml(path)
    out, seen = [], set()
    for i, item in enumerate(raw.get("statements") or []):
        where = f"{path.name}: statement {item.get('n', i + 1)}"
        unknown = set(item) - FIELDS
        if unknown:
            raise MapError(
                f"{where}: unknown field(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(FIELDS))}"
            )
        for key in ("n", "section", "lines", "says", "test"):
            if key not in item:
                raise MapError(f"{where}: `{key}` is missing")
        if item["test"] not in TESTS:
            raise MapError(f"{where}: test {item['test']!r}; choose one of {', '.join(TESTS)}")
        if item["section"] not in SECTIONS:
            raise MapError(f"{where}: section {item['section']!r} is not one of the chapter's")
        if item["test"] == "untestable" and not item.get("why"):
            raise MapError(f"{where}: an untestable statement says why (`why`)")
        if item["n"] in seen:
            raise MapError(f"{where}: number {item['n']} is used twice")
        seen.add(item["n"])
        out.append(
            Statement(
                n=int(item["n"]), section=item["section"], lines=str(item["lines"]), says=item["says"],
                test=item["test"], rows=tuple(item.get("rows") or ()), shows=tuple(item.get("shows") or ()),
                eq=str(item.get("eq", "")), partly=item.get("partly", ""), pending=item.get("pending"),
                note=item.get("note", ""), why=item.get("why", ""), open=bool(item.get("open", False)),
            )
        )  # fmt: skip
    planned = {int(k): str(v) for k, v in (raw.get("planned") or {}).items()}
    for s in out:
        if s.pending is not None and s.pending not in planned:
            raise MapError(f"{path.name}: statement {s.n}: pending {s.pending} is not a key of `planned`")
    return ChapterMap(tuple(out), dict(raw.get("not_statements") or {}), planned)
