"""The chapter map (configs/chapter/map.yaml) against the committed reference claims.

A named claim id must exist in a committed claims.csv; every committed claim row must be named
(testing a statement, showing one, or listed as testing none); a row that covers a statement must be
judged (exact or measured), and a row that only shows one must not be."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from normlab.engine import chapter

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "results" / "reference"


@pytest.fixture(scope="module")
def kinds() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for f in sorted(REFERENCE.glob("*/claims.csv")):
        for r in pd.read_csv(f).itertuples():
            out.setdefault(r.claim_id, set()).add(r.kind)
    return out


def test_every_named_row_is_committed_and_every_committed_row_is_named(kinds):
    cmap = chapter.load()
    assert sorted(cmap.named() - set(kinds)) == [], "named in the map but in no committed claims.csv"
    assert sorted(set(kinds) - cmap.named()) == [], "committed rows the map does not account for"


def test_rows_that_cover_are_judged_and_rows_that_show_are_not(kinds):
    cmap = chapter.load()
    for s in cmap.statements:
        for cid in s.rows:
            assert kinds[cid] <= set(chapter.JUDGED_KINDS), (s.n, cid, kinds[cid])
        for cid in s.shows:
            assert not kinds[cid] & set(chapter.JUDGED_KINDS), (s.n, cid, kinds[cid])
        if s.coverage in (chapter.COVERED, chapter.PARTLY):
            assert s.rows, s.n


def test_the_map_numbers_every_statement_once_and_says_why_where_it_cannot_test():
    cmap = chapter.load()
    assert [s.n for s in cmap.statements] == list(range(1, len(cmap.statements) + 1))
    assert all(s.why for s in cmap.statements if s.test == "untestable")
    assert {s.pending for s in cmap.statements} - {None} <= set(cmap.planned)
    assert sum(s.open for s in cmap.statements) == 3  # the chapter calls three questions open (#20, #54, #75)


def test_a_map_with_an_unknown_field_is_refused_with_its_name(tmp_path):
    bad = tmp_path / "map.yaml"
    bad.write_text("statements:\n  - {n: 1, section: '§2', lines: '1', says: x, test: exact, row: [K1]}\n")
    with pytest.raises(chapter.MapError, match="unknown field.*row"):
        chapter.load(bad)
    bad.write_text("statements:\n  - {n: 1, section: '§9', lines: '1', says: x, test: exact}\n")
    with pytest.raises(chapter.MapError, match="section '§9'"):
        chapter.load(bad)


def test_readme_and_report_quote_the_maps_own_count():
    headline = chapter.load().headline()
    assert headline in " ".join((ROOT / "README.md").read_text().split())
    assert headline in (REFERENCE / "report.md").read_text()
