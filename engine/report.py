"""A run folder's report.md: what ran, where it came from, each claim row and the figures."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import pandas as pd

from . import chapter, markdown
from .claims import EVIDENCE_KINDS, INCONCLUSIVE, NEAR_FACTOR, NOT_SUPPORTED, SUPPORTED, is_near
from .family import changes_at, cost_note, family_frame
from .stats import ALPHA
from .errors import NormlabError
from .results import Tables, atomic_write_text, load_tables, read_claims


def _fmt(v) -> str:
    """A table cell: 4 significant digits for numbers, Markdown's syntax escaped."""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return markdown.escape(v)


def _text(s) -> str:
    """Claim text as Markdown shows it literally: `alpha*lambda` is a product, not emphasis."""
    return str(s).replace("*", "\\*")


def claims_markdown(claims: pd.DataFrame) -> str:
    if claims.empty:
        return "_No claim rows._\n"
    cols = ["claim_id", "kind", "verdict", "statistic", "value", "ci_low", "ci_high", "interval", "threshold", "n"]
    rows = [
        [_fmt(r[c]) + (_near_mark(r) if c == "verdict" else "") for c in cols] + [_to_decide(r)]
        for _, r in claims.iterrows()
    ]
    out = "\n".join(markdown.table(cols + ["n to decide"], rows)) + "\n\n"
    for _, r in claims.iterrows():
        out += f"- **{r['claim_id']}** ({r['verdict']}): {_text(r['statement'])}"
        if isinstance(r.get("detail"), str) and r["detail"]:
            out += f" _{_text(r['detail'])}_"
        out += "\n"
    return out


def write_run_report(tables: Tables, claims: pd.DataFrame, plots: list[Path], title: str) -> Path:
    m = tables.manifest
    runs = tables.runs
    status = runs["status"].value_counts().to_dict() if "status" in runs else {}
    lines = [f"# {title}", ""]
    if tables.config.get("description"):
        lines += [tables.config["description"], ""]
    lines += [
        f"- experiment: `{tables.config.get('experiment')}`; runs: {len(runs)} "
        f"({', '.join(f'{k}: {v}' for k, v in sorted(status.items()))}); "
        f"seeds: {sorted(set(runs['seed'].tolist())) if 'seed' in runs else []}",
        f"- commit: `{m.get('git_commit')}`; normlab {m.get('versions', {}).get('normlab')}, "
        f"torch {m.get('versions', {}).get('torch')}; device: {m.get('device')}; "
        f"wall time: {m.get('wall_seconds', float('nan')):.1f} s"
        + (f"; claims judged again by commit `{m['judged']['git_commit']}`" if m.get("judged") else "")
        + ("; **smoke run** (tiny settings: the verdicts below are not meaningful)" if m.get("smoke") else ""),
        "",
        "## Claims",
        "",
        claims_markdown(claims),
        "## Figures",
        "",
    ]
    for p in plots:
        lines += [f"![{p.stem}](plots/{p.name})", ""]
    failed = runs[runs["status"] != "ok"] if "status" in runs else runs.iloc[0:0]
    if len(failed):
        lines += ["## Runs that did not finish normally", ""]
        for _, r in failed.iterrows():
            lines.append(f"- `{r['run_id']}`: {r['status']} after {r['steps_done']} steps {r.get('error', '')}")
        lines.append("")
    path = tables.folder / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


# ---------------------------------------------------------------- the combined report
VERDICT_ORDER = {"supported": 0, "inconclusive": 1, "not supported": 2}


def _load_folder(folder: Path) -> dict:
    if not (folder / "claims.csv").is_file():
        raise NormlabError(
            f"{folder} has no claims.csv; pass run folders written by `normlab run`, "
            "`normlab sweep` or `normlab reproduce`"
        )
    t = load_tables(folder, metrics=False)
    return {
        "folder": folder,
        "claims": read_claims(folder),
        "manifest": t.manifest,
        "config": t.config,
        "runs": t.runs,
        "plots": sorted((folder / "plots").glob("*.png")) if (folder / "plots").is_dir() else [],
    }


def counted_once(items: list[dict]) -> tuple[list[pd.DataFrame], list[str]]:
    """Each folder's evidence rows (measured and exact), each claim id counted once: a sweep's row is
    left out where a folder that is not a sweep judges the same claim. Also the ids left out."""
    judged = {c for it in items if not it["manifest"].get("sweep") for c in it["claims"]["claim_id"]}
    out, dropped = [], set()
    for it in items:
        c = it["claims"]
        if "kind" in c:
            c = c[c["kind"].isin(EVIDENCE_KINDS)]
        if it["manifest"].get("sweep"):
            dropped |= set(c["claim_id"]) & judged
            c = c[~c["claim_id"].isin(judged)]
        out.append(c)
    return out, sorted(dropped)


def _label(item: dict) -> str:
    """How a run folder is named in a report: its experiment, or `sweep NAME` for a sweep's folder."""
    sweep = item["manifest"].get("sweep")
    return f"sweep {sweep}" if sweep else item["config"].get("experiment", item["folder"].name)


def is_collection(path: Path) -> bool:
    """A folder of run folders (a `normlab reproduce` output) rather than one run folder."""
    return Path(path).is_dir() and not (Path(path) / "claims.csv").is_file()


def expand_folders(paths: list[Path], order: list[str] | None = None) -> list[Path]:
    """Run folders as given; a folder of run folders (e.g. a reproduce output) stands for its
    children, the names in `order` first (in that order), then the rest alphabetically."""
    rank = {name: i for i, name in enumerate(order or [])}
    out = []
    for p in paths:
        p = Path(p)
        if (p / "claims.csv").is_file():
            out.append(p)
        elif p.is_dir():
            kids = sorted(
                (c for c in p.iterdir() if c.is_dir() and (c / "claims.csv").is_file()),
                key=lambda c: (rank.get(c.name, len(rank)), c.name),
            )
            if not kids:
                raise NormlabError(f"{p} holds no run folders (none of its subfolders has a claims.csv)")
            out.extend(kids)
        else:
            raise NormlabError(f"{p} does not exist; pass run folders or a `normlab reproduce` output folder")
    return out


def _ci(r) -> str:
    lo, hi = r["ci_low"], r["ci_high"]
    if not (isinstance(lo, float) and isinstance(hi, float)) or math.isnan(lo) or math.isnan(hi):
        return "-"
    return f"[{_fmt(lo)}, {_fmt(hi)}] ({r.get('interval', '')})"


KIND_NOTE = (
    "Kinds: **measured** claims are judged on a 95% interval over seeds (n >= 3; the interval "
    "method is named); **exact** claims are identities or theory checks, judged on a maximum "
    "error against a tolerance, with no interval; **control** rows are true by construction "
    "(they check the instrument) and **descriptive** rows are reported, not judged: neither "
    "counts as evidence."
)


SEEDS_NOTE = (
    "**n to decide**, beside each inconclusive measured row: the seeds at which an interval of today's "
    "spread around today's estimate would clear its threshold (inf: the estimate sits on it; for a row judged "
    "by an exact sign test, the seeds at which every seed agreeing would pass it). "
    f"A dagger (†) marks a measured row whose distance to its threshold, in half-widths, is within a factor "
    f"{NEAR_FACTOR:g} of 1: as far as the same runs computed in another order moved a row (measured with "
    "`--ensemble off`), so another machine's rounding can move its verdict. **p (Holm)**: the row's one-sided "
    "p-value under its own rule's test (null: the claim is false; docs/verdicts.md names the tests), with Holm's "
    "family-adjusted value in brackets. **changes at**: the value the row's threshold or margin would have to "
    "cross, the data held, for its verdict to change."
)


def _to_decide(r) -> str:
    try:
        v = float(r.get("n_to_decide", "nan"))
    except (TypeError, ValueError):
        return ""
    if r.get("verdict") != "inconclusive" or math.isnan(v):
        return ""
    return "inf" if math.isinf(v) else str(int(v))


def _p_cell(r, fam) -> str:
    """The row's one-sided p-value and, in brackets, Holm's adjustment across the family."""
    p = r.get("p_value", float("nan"))
    if not isinstance(p, float) or math.isnan(p):
        return ""
    return f"{p:.2g}" + ("" if fam is None else f" ({fam['holm_p']:.2g})")


def _near_mark(r) -> str:
    try:
        return " †" if is_near(float(r.get("distance_hw", "nan"))) else ""
    except (TypeError, ValueError):
        return ""


def time_table(items: list[dict]) -> list[str]:
    """Where each folder's time went, from its manifest and runs.csv: wall time, workers, runs, and
    the runs' own training time (a stacked member counts its share of the ensemble's), also as a
    share of the worker time the wall clock offered."""
    rows = [
        "## Where the time went",
        "",
        "Training is the sum of the runs' own clocks (runs.csv `train_seconds`; a stacked member counts "
        "its share of its ensemble's time), in core-seconds. The rest of each wall time is tables computed "
        "without training runs, workers idle at the end of a stage, pool start and writing the CSVs; "
        "analysis, figures and reports come after the manifest's clock stops.",
        "",
    ]
    header = ("experiment", "wall time (s)", "workers", "runs", "training (core-s)", "training / (wall x workers)")
    cells = []
    total_wall = total_train = total_runs = 0.0
    for it in items:
        m, runs = it["manifest"], it["runs"]
        wall, jobs = float(m.get("wall_seconds", float("nan"))), int(m.get("jobs") or 1)
        train = float(runs["train_seconds"].sum()) if "train_seconds" in runs and len(runs) else 0.0
        busy = f"{train / (wall * jobs):.0%}" if wall > 0 and train > 0 else "-"
        cells.append([_label(it), f"{wall:.1f}", jobs, len(runs), f"{train:.1f}", busy])
        total_wall, total_train, total_runs = total_wall + wall, total_train + train, total_runs + len(runs)
    cells.append(["all", f"{total_wall:.1f}", None, int(total_runs), f"{total_train:.1f}", None])
    return rows + markdown.table(header, cells) + [""]


def write_report(
    folders: list[Path],
    out: Path | str | None,
    fmt: str,
    overwrite: bool,
    experiments: list[str],
    titles: dict[str, str],
    short_names: dict[str, str] | None = None,
) -> Path:
    """`normlab report`: its arguments checked (one clear error each), then `build_report`. OUT
    defaults to report.FMT here, or inside the one reproduce folder given; an existing report is
    replaced only with `overwrite`. A reproduce folder's report lists the `experiments` it lacks."""
    from .errors import ConfigError

    if fmt not in ("md", "html"):
        raise ConfigError(f"{fmt!r} is not allowed; choose md or html", key="format")
    collection = any(is_collection(p) for p in folders)
    if out is None:
        out = (folders[0] if len(folders) == 1 and collection else Path(".")) / f"report.{fmt}"
    if Path(out).exists() and not overwrite:
        raise ConfigError(
            f"{out} exists; choose another report file ({{out}}) or replace it ({{overwrite}})", key="out"
        )
    # a reproduction's folder lists the experiments it lacks; an ad-hoc grid's (sweep.yaml beside its
    # points) is one experiment, complete
    reproduction = any(is_collection(p) and not (Path(p) / "sweep.yaml").is_file() for p in folders)
    expected = experiments if reproduction else None
    return build_report(folders, Path(out), fmt, expected=expected, titles=titles, short_names=short_names)


def build_report(
    folders: list[Path],
    out: Path,
    fmt: str,
    expected: list[str] | None = None,
    titles: dict[str, str] | None = None,
    short_names: dict[str, str] | None = None,
) -> Path:
    """One Markdown or HTML report over run folders: summary, one section per experiment, and
    what was not reproduced. Depends only on the files, so it regenerates byte for byte.
    `expected`: experiments a complete report has, in order; absent ones are listed as not run.
    `short_names`: claim (B1, K1, ...) -> the short name the glance figure shows beside its id."""
    out = Path(out)
    items = [_load_folder(f) for f in expand_folders(folders, expected)]
    md: list[str] = ["# normlab report", ""]
    md += [
        "Claims of Grosse, ch. 5 (adaptive gradient methods, normalization, weight decay), measured by "
        "normlab. Every verdict below is computed from the CSV files of the run folder named with it.",
        "",
    ]
    md += _summary(items, out, short_names or {})
    for it in items:
        md += _experiment_section(it, titles or {}, out)
    md += _chapter_section(items)
    md += time_table(items)
    md += _not_reproduced(items, expected)
    # a collection may carry a hand-written account of why verdicts moved since its previous version:
    # the engineering history, after the results
    for f in folders:
        notes = Path(f) / "changes.md"
        if is_collection(f) and notes.is_file():
            md += [notes.read_text().strip(), ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, "\n".join(md) if fmt == "md" else _html(md, out))
    return out


def _rel(p: Path, out: Path) -> str:
    """A file's path as the report at `out` links to it."""
    return os.path.relpath(p, out.parent).replace(os.sep, "/")


def _summary(items: list[dict], out: Path, short_names: dict[str, str]) -> list[str]:
    """The top of the report, in the order a reader wants it: the verdict counts (each claim once), the
    places of what holds across the family of rows and of the chapter's coverage, the claims-at-a-glance
    figure, which folders ran at smoke settings, then every claim row in one table and the forest of
    their intervals (figures written beside `out`)."""
    counted, repeated = counted_once(items)
    md = ["## Summary", ""] + _counts(counted, repeated) + _family(items) + _coverage(items)
    every = _every_row(items)
    fam = family_frame(every) if every is not None else pd.DataFrame()
    holm_of = {(r["experiment"], r["claim_id"]): r for _, r in fam.iterrows()}
    figures = every is not None and "bound_low" in every
    if figures:
        from .plots import claims_forest, claims_summary

        glance = claims_summary(
            pd.concat(counted, ignore_index=True), out.parent / "claims_at_a_glance.png", short_names
        )
        md += [f"![claims at a glance]({_rel(glance, out)})", ""]
    smoke = [it["config"].get("experiment", it["folder"].name) for it in items if it["manifest"].get("smoke")]
    if smoke:
        md += [
            f"**Smoke settings** (a few steps, one or two seeds) in: {', '.join(smoke)}. Those verdicts test "
            "the pipeline, not the claims.",
            "",
        ]
    md += ["### Every claim row", "", KIND_NOTE, "", SEEDS_NOTE, ""]
    header = (
        "experiment", "claim", "kind", "verdict", "statistic", "value", "95% CI", "threshold", "n", "n to decide",
        "p (Holm)", "changes at",
    )  # fmt: skip
    rows = [
        [
            _label(it),
            r["claim_id"],
            r.get("kind", ""),
            f"**{r['verdict']}**{_near_mark(r)}",
            _fmt(r["statistic"]),
            _fmt(r["value"]),
            _ci(r),
            _fmt(r["threshold"]),
            r["n"],
            _to_decide(r),
            _p_cell(r, holm_of.get((_label(it), r["claim_id"]))),
            changes_at(r),
        ]  # fmt: skip
        for it in items
        for _, r in it["claims"].iterrows()
    ]
    md += markdown.table(header, rows)
    if figures:
        # intervals are what the forest shows; an exact check is a maximum error against a tolerance, which
        # its experiment's own figure draws (and which would more than double the figure's rows)
        shown = every[every["kind"] != "exact"] if "kind" in every else every
        if len(shown):
            forest = claims_forest(shown, out.parent / "claims_forest.png")
            md += [
                "",
                "Every measured, control and descriptive row, with its interval (exact checks are in the table "
                "above and in their experiments' figures):",
                "",
                f"![every claim row]({_rel(forest, out)})",
            ]
    return md + [""]


def _counts(counted: list[pd.DataFrame], repeated: list[str]) -> list[str]:
    """The headline: evidence rows by verdict, measured claims and exact checks, each claim once."""
    every = pd.concat(counted, ignore_index=True) if counted else pd.DataFrame(columns=["kind", "verdict"])
    if "kind" not in every:
        every = every.assign(kind="measured")
    md = []
    for kind, label in (("measured", "Measured claims"), ("exact", "Exact checks (identities and theory)")):
        c = every[every["kind"] == kind]["verdict"].value_counts()
        md += [
            f"{label}: " + ", ".join(f"{k} {c.get(k, 0)}" for k in VERDICT_ORDER if k in c or kind == "measured"),
            "",
        ]
    if repeated:
        md += [
            f"(each claim counted once: {', '.join(repeated)} are judged both by an experiment and by a sweep "
            "of it; the counts and the figure take the experiment's rows, the table shows both)",
            "",
        ]
    return md


def _family(items: list[dict]) -> list[str]:
    """What the measured rows support as one family, adjusted for their number (engine/family.py)."""
    every = _every_row(items)
    fam = family_frame(every) if every is not None else pd.DataFrame()
    if fam.empty:
        return ["Across the family: these folders' claims carry no p-values (written before they did); "
                "`normlab judge FOLDER --write` judges them again.", ""]  # fmt: skip
    m = len(fam)
    older = [_label(it) for it in items if "p_value" not in it["claims"]]
    before = fam["verdict"].value_counts()
    after = fam["family_verdict"].value_counts()
    moved = fam[fam["verdict"] != fam["family_verdict"]]
    md = [
        f"Across the family: every measured row with a p-value in these folders ({m} rows, a sweep's repeats "
        f"included), Holm-adjusted at one-sided {ALPHA:g} in each direction (family-wise error under any "
        "dependence; engine/family.py). Supported "
        f"{before.get(SUPPORTED, 0)} -> {after.get(SUPPORTED, 0)}, not supported {before.get(NOT_SUPPORTED, 0)} -> "
        f"{after.get(NOT_SUPPORTED, 0)}, inconclusive {before.get(INCONCLUSIVE, 0)} -> {after.get(INCONCLUSIVE, 0)}.",
        "",
    ]
    if len(moved):
        md += [
            "Rows the family no longer decides: "
            + "; ".join(
                f"{r['experiment']} {r['claim_id']} ({r['verdict']}, p {r['p_value']:.2g}, "
                f"against {r['p_against']:.2g}; Holm {_holm(r):.2g})"
                for _, r in moved.iterrows()
            )
            + ".",
            "",
        ]
    if older:  # said, not skipped silently: their rows are outside the family until judged again
        md += [
            f"Outside the family: {', '.join(older)}, whose claims carry no p-values (written before they did); "
            "`normlab judge FOLDER --write` judges them again.",
            "",
        ]
    return md + [cost_note(m), ""]


def _holm(r) -> float:
    """The adjusted p-value of the direction the row was decided in."""
    return r["holm_p"] if r["verdict"] == SUPPORTED else r["holm_against"]


def _every_row(items: list[dict]) -> pd.DataFrame | None:
    return pd.concat([it["claims"].assign(experiment=_label(it)) for it in items], ignore_index=True) if items else None


def _verdicts(items: list[dict]) -> dict[str, list[tuple[str, str, str]]]:
    """claim id -> [(folder label, kind, verdict)] over the report's folders (K4 rows sit in two)."""
    out: dict[str, list[tuple[str, str, str]]] = {}
    for it in items:
        for _, r in it["claims"].iterrows():
            out.setdefault(str(r["claim_id"]), []).append((_label(it), str(r.get("kind", "")), str(r["verdict"])))
    return out


def _coverage(items: list[dict]) -> list[str]:
    """How many of the chapter's testable statements these rows test (the map's count, and which of
    its rows these folders hold)."""
    cmap = chapter.load()
    found = _verdicts(items)
    if not cmap.named() & set(found):
        return [
            "The chapter: these folders hold none of the rows the chapter map names (`normlab list --chapter`).",
            "",
        ]
    judged = {c for c, v in found.items() if any(k in chapter.JUDGED_KINDS for _, k, _ in v)}
    missing = sorted({r for s in cmap.statements for r in s.rows} - judged)
    line = f"The chapter: {cmap.headline()}; see 'The chapter, statement by statement' below."
    if missing:
        line += (
            f" These folders lack {len(missing)} of the rows the map names, so their statements show no verdict here."
        )
    return [line, ""]


def _chapter_section(items: list[dict]) -> list[str]:
    """Every testable statement of the chapter by section: how well the rows cover it, and their verdicts."""
    cmap = chapter.load()
    found = _verdicts(items)
    if not cmap.named() & set(found):  # a user's own experiment: the map says nothing about its rows
        return []
    c = cmap.counts()
    md = [
        "## The chapter, statement by statement",
        "",
        f"{cmap.headline()}; {c[chapter.NOT_TESTABLE]} more are not testable as stated. A statement is covered "
        "only by a judged row (exact or measured) whose statistic measures it; descriptive and control rows "
        "show, they do not cover. Where a row's verdict is listed it comes from this report's folders. "
        "'planned' names the work that is to add a statement's rows. Lines refer to the chapter's text.",
        "",
    ]

    def verdicts(ids: tuple[str, ...]) -> str:
        parts = []
        for cid in ids:
            got = found.get(cid)
            if not got:
                parts.append(f"{cid} (not in these folders)")
                continue
            labels = {lab for lab, _, _ in got}
            shown = ", ".join(f"{v} ({lab})" if len(labels) > 1 else v for lab, _, v in got)
            parts.append(f"{cid} {shown}")
        return "; ".join(parts)

    header = ("#", "lines", "statement", "test", "coverage", "rows and verdicts", "notes")
    for section in chapter.SECTIONS:
        rows = [s for s in cmap.statements if s.section == section]
        if not rows:
            continue
        counts = {
            k: sum(1 for s in rows if s.coverage == k) for k in (chapter.COVERED, chapter.PARTLY, chapter.NOT_COVERED)
        }
        md += [f"### {section}: {', '.join(f'{v} {k}' for k, v in counts.items() if v) or 'not testable'}", ""]
        cells = []
        for s in rows:
            notes = [f"partly: {s.partly}" if s.partly else "", s.note, f"not testable: {s.why}" if s.why else ""]
            notes += [
                f"planned: {cmap.planned[s.pending]}" if s.pending else "",
                "open question of the chapter" if s.open else "",
            ]
            shows = f"; shows: {verdicts(s.shows)}" if s.shows else ""
            cells.append(
                [
                    s.n, s.lines + (f" (Eq. {s.eq})" if s.eq and s.eq[0].isdigit() else f" ({s.eq})" if s.eq else ""),
                    _text(s.says), s.test, f"**{s.coverage}**", (verdicts(s.rows) or "none") + shows,
                    _text(" ".join(n.rstrip(".") + "." for n in notes if n)),
                ]
            )  # fmt: skip
        md += markdown.table(header, cells) + [""]
    return md


def _experiment_section(it: dict, titles: dict[str, str], out: Path) -> list[str]:
    """One folder's section: where its numbers come from, each claim row in full, its figures."""
    m, cfg = it["manifest"], it["config"]
    name = cfg.get("experiment", it["folder"].name)
    heading = titles.get(name, name) + (f", `normlab sweep {m['sweep']}`" if m.get("sweep") else "")
    folder_note = f" (`{it['folder'].name}`)" if it["folder"].name not in (name, f"sweep_{m.get('sweep')}") else ""
    md = [f"## {heading}{folder_note}", ""]
    if cfg.get("description"):
        md += [str(cfg["description"]).strip(), ""]
    runs = it["runs"]
    status = runs["status"].value_counts().to_dict() if "status" in runs else {}
    md += [
        f"- run folder: `{_rel(it['folder'], out)}`; commit `{m.get('git_commit')}`; seeds {m.get('seeds')}; "
        f"wall time {m.get('wall_seconds', float('nan'))} s; runs: "
        + (", ".join(f"{k} {v}" for k, v in sorted(status.items())) or "none (exact computations)")
        + ("; **smoke settings: verdicts not meaningful**" if m.get("smoke") else ""),
        "",
    ]
    for _, r in it["claims"].iterrows():
        md += [
            f"### {r['claim_id']}: {r['verdict']} ({r.get('kind', '')})",
            "",
            _text(r["statement"]),
            "",
            f"- statistic: {_text(r['statistic'])}",
            f"- value: {_fmt(r['value'])}; 95% CI: {_ci(r)}; n = {r['n']}",
            f"- threshold for `supported`: {_text(r['threshold'])}",
        ]
        if isinstance(r.get("detail"), str) and r["detail"]:
            md.append(f"- detail: {_text(r['detail'])}")
        md.append("")
    for p in it["plots"]:
        md += [f"![{p.stem}]({_rel(p, out)})", ""]
    return md


def _not_reproduced(items: list[dict], expected: list[str] | None) -> list[str]:
    """Every row that is not supported (controls aside), every run that did not finish, every
    expected experiment with no folder."""
    md = ["## What was not reproduced", ""]
    missing = [e for e in (expected or []) if e not in {it["config"].get("experiment") for it in items}]
    lines = []
    for it in items:
        name = _label(it)
        for _, r in it["claims"].iterrows():
            if r["verdict"] not in ("supported", "not judged") and r.get("kind") != "control":
                lines.append(
                    f"- {name} / {r['claim_id']}: **{r['verdict']}** (value {_fmt(r['value'])}, threshold "
                    f"{_fmt(r['threshold'])})"
                )
        runs = it["runs"]
        if "status" in runs:
            for status, n in runs[runs["status"] != "ok"]["status"].value_counts().items():
                lines.append(f"- {name}: {n} run(s) {status} (recorded in runs.csv, never dropped)")
    lines += [f"- {e}: not run (no run folder given)" for e in missing]
    return md + (lines or ["- nothing: every claim row is supported and every run finished"]) + [""]


def _html(md: list[str], out: Path) -> str:
    """The report's Markdown rendered as one self-contained page (every figure embedded), its
    sections in a collapsed table of contents and its verdicts in colour."""
    html_body, toc = _html_toc(markdown.render("\n".join(markdown.embed_image(x, out.parent) for x in md)))
    html_body = re.sub(  # verdicts in colour (the text stays, for printing and screen readers)
        r"<strong>(supported|not supported|inconclusive|not judged)</strong>",
        lambda m: '<strong class="v-{}">{}</strong>'.format(m[1].replace(" ", "-"), m[1]),
        html_body,
    )
    css = TOC_CSS + markdown.VERDICT_CSS
    return markdown.page("normlab report", _insert_after_first_heading(html_body, toc), css)


TOC_CSS = (
    "nav.toc{background:#f7f7f7;border:1px solid #ddd;padding:.5em 1.2em;margin:1em 0}"
    "nav.toc ul{margin:.2em 0;padding-left:1.2em}"
)


def _slug(text: str, used: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", re.sub(r"<[^>]+>", "", text).lower()).strip("-") or "section"
    slug, i = base, 2
    while slug in used:
        slug, i = f"{base}-{i}", i + 1
    used.add(slug)
    return slug


def _html_toc(body: str) -> tuple[str, str]:
    """Give every h2/h3 an id; return the body and a table of contents linking to them."""
    used: set[str] = set()
    entries: list[tuple[int, str, str]] = []

    def tag(m: re.Match) -> str:
        level, text = int(m[1]), m[2]
        slug = _slug(text, used)
        entries.append((level, slug, re.sub(r"<[^>]+>", "", text)))
        return f'<h{level} id="{slug}">{text}</h{level}>'

    body = re.sub(r"<h([23])>(.*?)</h\1>", tag, body)
    if not entries:
        return body, ""
    items, open_li, open_sub = ["<ul>"], False, False
    for level, slug, text in entries:
        link = f'<a href="#{slug}">{text}</a>'  # already escaped by markdown-it
        if level == 2 or not open_li:  # a section; its subsections nest inside its item
            items += (["</ul>"] if open_sub else []) + (["</li>"] if open_li else []) + [f"<li>{link}"]
            open_li, open_sub = True, False
        else:
            items += ([] if open_sub else ["<ul>"]) + [f"<li>{link}</li>"]
            open_sub = True
    items += (["</ul>"] if open_sub else []) + (["</li>"] if open_li else []) + ["</ul>"]
    # collapsed: the first screen shows the summary and its verdicts, the contents open on a click
    return body, '<nav class="toc"><details><summary>Contents</summary>' + "".join(items) + "</details></nav>\n"


def _insert_after_first_heading(body: str, block: str) -> str:
    end = body.find("</h1>")
    return body if not block else (body[: end + 5] + "\n" + block + body[end + 5 :] if end >= 0 else block + body)
