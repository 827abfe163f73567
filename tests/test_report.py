"""`normlab reproduce --smoke` and `normlab report`: the whole pipeline, and byte-identical reports."""

import shutil
from pathlib import Path

from typer.testing import CliRunner

from normlab.cli.main import app
from normlab.experiments import REGISTRY

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


def test_reproduce_smoke_then_report_regenerates_identically_elsewhere(tmp_path):
    out = tmp_path / "repro"
    r = runner.invoke(
        app, ["reproduce", "--smoke", "--jobs", "2", "--out", str(out), "--only", "baselines,knockout,adaptive_gotchas"]
    )
    assert r.exit_code == 0, r.output
    md, html = (out / "report.md").read_text(), (out / "report.html").read_text()
    for name in ("baselines", "knockout", "adaptive_gotchas"):
        assert f"## {REGISTRY[name].title}" in md
    assert "**Smoke settings**" in md and "## What was not reproduced" in md
    assert html.count("data:image/png;base64,") == md.count("![")  # figures embedded
    assert 'src="plots/' not in html and "http" not in html.split("<body>")[1]  # self-contained
    # a table of contents whose every link lands on a heading, and verdicts in colour
    import re

    toc = re.search(r'<nav class="toc">(.*?)</nav>', html, flags=re.S)[1]
    links = re.findall(r'href="#([^"]+)"', toc)
    ids = re.findall(r'<h[23] id="([^"]+)">', html)
    assert links == ids and len(ids) == len(set(ids)) and any(REGISTRY["knockout"].title in t for t in [toc])
    verdicts = re.findall(r"\*\*(supported|not supported|inconclusive|not judged)\*\*", md)
    assert len(re.findall(r'<strong class="v-(?:supported|not-supported|inconclusive|not-judged)">', html)) == len(
        verdicts
    )

    # a second invocation reuses every finished experiment
    r = runner.invoke(app, ["reproduce", "--smoke", "--out", str(out), "--only", "baselines,knockout,adaptive_gotchas"])
    assert r.exit_code == 0 and r.output.count("already finished") == 3

    # a finished folder made with another config is never silently reused
    cfg_file = out / "baselines" / "config.yaml"
    original = cfg_file.read_text()
    cfg_file.write_text(original.replace("seeds: 1", "seeds: 7"))
    r = runner.invoke(app, ["reproduce", "--smoke", "--out", str(out), "--only", "baselines"])
    assert r.exit_code == 2 and "holds baselines results of a different config" in r.output
    cfg_file.write_text(original)

    # copied to another place (another machine), plot and report give the same bytes
    copy = tmp_path / "elsewhere"
    shutil.copytree(out, copy)
    for png in (copy / "knockout" / "plots").glob("*.png"):
        png.unlink()
    assert runner.invoke(app, ["plot", str(copy / "knockout")]).exit_code == 0
    for png in (out / "knockout" / "plots").glob("*.png"):
        assert (copy / "knockout" / "plots" / png.name).read_bytes() == png.read_bytes()
    for fmt in ("md", "html"):
        (copy / f"report.{fmt}").unlink()
        assert runner.invoke(app, ["report", str(copy), "--format", fmt]).exit_code == 0
        assert (copy / f"report.{fmt}").read_bytes() == (out / f"report.{fmt}").read_bytes(), fmt


def test_report_bad_input():
    r = runner.invoke(app, ["report", "no/such/folder"])
    assert r.exit_code == 2 and "no/such/folder does not exist" in r.output
    r = runner.invoke(app, ["report", str(ROOT / "configs")])
    assert r.exit_code == 2 and "holds no run folders" in r.output
    r = runner.invoke(app, ["reproduce", "--only", "nope"])
    assert r.exit_code == 2 and "--only: nope not known" in r.output


def test_an_existing_report_file_is_refused_unless_overwrite(tmp_path):
    folder = ROOT / "results" / "reference" / "knockout"
    out = tmp_path / "r.md"
    assert runner.invoke(app, ["report", str(folder), "--out", str(out)]).exit_code == 0
    first = out.read_bytes()
    out.write_text("mine")  # a file the user wrote, or an earlier report
    r = runner.invoke(app, ["report", str(folder), "--out", str(out)])
    assert r.exit_code == 2 and "r.md exists; choose another report file (--out) or replace it (--overwrite)" in (
        " ".join(r.output.split())
    )
    assert out.read_text() == "mine"  # untouched
    r = runner.invoke(app, ["report", str(folder), "--out", str(out), "--overwrite"])
    assert r.exit_code == 0 and out.read_bytes() == first


def test_the_report_says_where_each_folders_time_went(tmp_path):
    """The time table's numbers are each folder's manifest wall time and workers and the sum of its
    runs' train_seconds (recomputed here from the CSVs), with a total row."""
    import json

    import pandas as pd

    from normlab.engine.report import build_report

    ref = Path(__file__).resolve().parents[1] / "results" / "reference"
    names = ["baselines", "identities"]  # one with runs, one with tables only
    for n in names:
        shutil.copytree(ref / n, tmp_path / n)
    out = build_report([tmp_path / n for n in names], tmp_path / "report.md", "md")
    lines = out.read_text().split("## Where the time went", 1)[1].splitlines()
    rows = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:-1]] for ln in lines if ln.startswith("| ")}
    walls, trains, counts = [], [], []
    for n in names:
        m = json.loads((tmp_path / n / "manifest.json").read_text())
        runs = pd.read_csv(tmp_path / n / "runs.csv")
        train = float(runs["train_seconds"].sum()) if len(runs) else 0.0
        assert rows[n][:4] == [f"{m['wall_seconds']:.1f}", str(m["jobs"]), str(len(runs)), f"{train:.1f}"]
        walls, trains, counts = walls + [m["wall_seconds"]], trains + [train], counts + [len(runs)]
    assert rows["baselines"][4] == f"{trains[0] / (walls[0] * 2):.0%}" and rows["identities"][4] == "-"
    assert rows["all"][:4] == [f"{sum(walls):.1f}", "", str(sum(counts)), f"{sum(trains):.1f}"]


def test_the_reference_report_opens_on_its_verdicts_and_shows_claim_text_literally():
    """The first screen is the summary (the contents collapse; the changelog comes last), the first
    figure has one row per claim, and `alpha*lambda` in a claim's text is a product, not emphasis."""
    import re

    md = (ROOT / "results" / "reference" / "report.md").read_text()
    html = (ROOT / "results" / "reference" / "report.html").read_text()
    sections = re.findall(r"^## (.+)$", md, flags=re.M)
    assert sections[0] == "Summary" and sections[-1] == "Changes since the previous reference"
    assert sections.index("What was not reproduced") == len(sections) - 2
    assert '<nav class="toc"><details><summary>Contents</summary>' in html
    assert "alpha*lambda" in html and not re.search(r"alpha<em>|<em>lambda", html)
    assert md.index("![claims at a glance](claims_at_a_glance.png)") < md.index("![every claim row](claims_forest.png)")


def test_claims_at_a_glance_has_one_bar_per_claim_in_the_claims_order(tmp_path):
    import pandas as pd

    from normlab.engine.plots import claim_family, claims_summary, glance_counts

    rows = pd.DataFrame(
        {
            "claim_id": ["K10", "K3-euler", "K3-slope", "B1-mlp", "K1", "K3-renorm"],
            "kind": ["exact", "measured", "measured", "measured", "measured", "control"],
            "verdict": ["supported", "supported", "inconclusive", "supported", "not supported", "supported"],
        }
    )
    assert [claim_family(c) for c in rows["claim_id"]] == ["K10", "K3", "K3", "B1", "K1", "K3"]
    counts = glance_counts(rows)  # the control row is not evidence
    assert list(counts.index) == ["B1", "K1", "K3", "K10"]
    assert counts.to_dict("index")["K3"] == {"supported": 1, "inconclusive": 1, "not supported": 0}
    assert claims_summary(rows, tmp_path / "g.png").is_file()


def test_report_counts_each_claim_once_and_exact_checks_apart(tmp_path):
    """A sweep that judges the same claim as its experiment adds rows to the table, not to the counts."""
    import json

    import pandas as pd

    from normlab.engine.report import build_report

    def folder(name, sweep, rows):
        d = tmp_path / name
        d.mkdir()
        pd.DataFrame(rows).to_csv(d / "claims.csv", index=False)
        pd.DataFrame({"run_id": [], "arm": [], "seed": [], "status": []}).to_csv(d / "runs.csv", index=False)
        (d / "config.yaml").write_text(f"experiment: {name if not sweep else 'exp'}\n")
        (d / "manifest.json").write_text(json.dumps({"sweep": sweep} if sweep else {}))
        return d

    def row(cid, kind, verdict):
        return {"claim_id": cid, "kind": kind, "statement": "s", "statistic": "t", "value": 1.0, "threshold": "< 2",
                "op": "<", "bound_low": float("nan"), "bound_high": 2.0, "ci_low": 0.5, "ci_high": 1.5,
                "interval": "t", "n": 5, "verdict": verdict, "detail": "", "n_to_decide": float("nan"),
                "distance_hw": 2.0}  # fmt: skip

    exp = folder("exp", None, [row("K1", "measured", "supported"), row("K1-theory", "exact", "supported"),
                               row("K1-d", "descriptive", "not judged")])  # fmt: skip
    sw = folder("sweep_exp", "exp", [row("K1", "measured", "inconclusive"), row("K1-theory", "exact", "supported")])
    out = build_report([exp, sw], tmp_path / "report.md", "md")
    md = out.read_text()
    assert "Measured claims: supported 1, inconclusive 0, not supported 0" in md
    assert "Exact checks (identities and theory): supported 1" in md
    assert "each claim counted once: K1, K1-theory" in md
    assert "| sweep exp | K1 |" in md  # the table still shows the sweep's row


def test_the_report_opens_on_the_counts_and_the_glance_figure_before_the_table():
    """A reader meets the headline first: the counts, the places of the family's adjustment and the
    chapter's coverage, the glance figure (each claim with its short name), and only then the table."""
    md = (ROOT / "results" / "reference" / "report.md").read_text()
    top = md.index("## Summary")
    marks = ("Measured claims: supported", "Across the family:", "The chapter:", "![claims at a glance]",
             "### Every claim row", "| experiment | claim |")  # fmt: skip
    order = [md.index(s, top) for s in marks]
    assert order == sorted(order)
    assert md.index("| experiment | claim |") > md.index("![claims at a glance]")
    from normlab.experiments import REGISTRY

    short = {c: n for e in REGISTRY.values() for c, n in e.short_names.items()}
    from normlab.engine.plots import claim_family

    judged = {claim_family(c.id) for e in REGISTRY.values() for c in e.claims}
    assert set(short) == judged  # every claim an experiment judges has its short name, and no other


def test_a_folder_without_p_values_is_named_outside_the_family(tmp_path):
    """A folder judged before claims carried p-values is not silently left out of the family."""
    import pandas as pd

    import normlab

    ref = Path(__file__).resolve().parent.parent / "results" / "reference"
    for name in ("identities", "fisher"):
        shutil.copytree(ref / name, tmp_path / name)
    claims = pd.read_csv(tmp_path / "fisher" / "claims.csv").drop(columns=["p_value", "p_against", "test"])
    claims.to_csv(tmp_path / "fisher" / "claims.csv", index=False)
    normlab.report([tmp_path / "identities", tmp_path / "fisher"], tmp_path / "r.md", "md")
    assert "these folders' claims carry no p-values" in " ".join((tmp_path / "r.md").read_text().split())
    shutil.copytree(ref / "baselines", tmp_path / "baselines")
    normlab.report([tmp_path / "baselines", tmp_path / "fisher"], tmp_path / "r2.md", "md")
    text = " ".join((tmp_path / "r2.md").read_text().split())
    assert "Outside the family: fisher, whose claims carry no p-values" in text and "(3 rows" in text


def test_the_chapter_section_lists_the_folders_verdicts_and_is_left_out_where_the_map_names_no_row(tmp_path):
    """K1 is in the chapter map: its statement shows K1's verdict from this folder, and the rows the
    folder lacks say so. A user's own claim (P1) is not: no chapter section, and the summary says why."""
    import json

    import pandas as pd

    from normlab.engine.report import build_report

    def folder(name, cid):
        d = tmp_path / name
        d.mkdir()
        claim = {"claim_id": cid, "kind": "measured", "statement": "s", "statistic": "t", "value": 1.0,
                 "threshold": "< 2", "op": "<", "bound_low": float("nan"), "bound_high": 2.0, "ci_low": 0.5,
                 "ci_high": 1.5, "interval": "t", "n": 5, "verdict": "inconclusive", "detail": "",
                 "n_to_decide": float("nan"), "distance_hw": 2.0}  # fmt: skip
        pd.DataFrame([claim]).to_csv(d / "claims.csv", index=False)
        pd.DataFrame({"run_id": [], "arm": [], "seed": [], "status": []}).to_csv(d / "runs.csv", index=False)
        (d / "config.yaml").write_text(f"experiment: {name}\n")
        (d / "manifest.json").write_text(json.dumps({}))
        return d

    md = build_report([folder("mapped", "K1")], tmp_path / "a.md", "md").read_text()
    assert "## The chapter, statement by statement" in md
    assert "K1 inconclusive; K1-bestlr (not in these folders)" in md
    md = build_report([folder("own", "P1")], tmp_path / "b.md", "md").read_text()
    assert "## The chapter, statement by statement" not in md
    assert "these folders hold none of the rows the chapter map names" in md
