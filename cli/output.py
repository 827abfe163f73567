"""What the commands print: tables (Rich, or tab-separated lines with --plain), progress bars and
the claim table. Everything goes through the one `ui` object, so --plain switches all of it."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Optional

import typer

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn
from rich.text import Text
from rich.markup import escape
from rich.table import Table

from normlab import VERDICT_COLORS
from normlab import metrics as M

COLORS = {verdict: c["terminal"] for verdict, c in VERDICT_COLORS.items()}


class Output:
    """stdout and stderr consoles; `plain` (--plain): for pipes and scripts, tables become
    tab-separated lines, nothing is wrapped or coloured and no progress bars are drawn."""

    def __init__(self) -> None:
        self.set_plain(False)

    def set_plain(self, plain: bool) -> None:
        self.plain, self.json = bool(plain), False
        if plain:
            self.console = Console(no_color=True, highlight=False, soft_wrap=True, width=10_000)
            self.err = Console(stderr=True, no_color=True, highlight=False, soft_wrap=True, width=10_000)
        else:  # each invocation starts from the defaults (tests run many in one process)
            self.console, self.err = self._console(sys.stdout, False), self._console(sys.stderr, True)

    @staticmethod
    def _console(stream, stderr: bool) -> Console:
        """A terminal's own width; a pipe or a file (a CI log) gets whole lines, never wrapped at 80
        columns or cut ("inconclus…"). Rich honours NO_COLOR either way."""
        if stream.isatty():
            return Console(stderr=stderr)
        return Console(stderr=stderr, soft_wrap=True, width=10_000)

    def set_json(self) -> None:
        """--json: stdout carries one JSON document (`emit`) and nothing else; messages go to stderr,
        plain, and neither tables nor progress bars are drawn."""
        self.set_plain(True)
        self.json = True
        self.console = self.err

    def emit(self, doc: dict) -> None:
        """The command's one JSON document, on stdout (NaN as null)."""
        import json

        print(json.dumps(doc, indent=1, default=str))

    def table(self, table: Table) -> None:
        """A Rich table, or in plain mode its title as a comment and its cells as tab-separated lines."""
        if self.json:
            return
        if not self.plain:
            self.console.print(table)
            return
        from rich.text import Text

        cells = [
            [Text.from_markup(str(c)).plain if isinstance(c, str) else str(c) for c in col.cells]
            for col in table.columns
        ]
        print(f"# {table.title}" if table.title else "", end="\n" if table.title else "")
        print("\t".join(str(col.header) for col in table.columns))
        for row in zip(*cells):
            print("\t".join(row))

    def bars(self, label_width: int, unit: str = "", transient: bool = False) -> Progress:
        """The progress bars every long command shows: label, bar, done/total, elapsed time and, for
        the overall bar, the time left. Off in plain mode (and when stderr is not a terminal, Rich
        draws nothing but the final state)."""
        return Progress(
            TextColumn(f"{{task.description:<{label_width}}}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}" + unit),
            TimeElapsedColumn(),
            TextColumn("eta"),
            EtaColumn(),
            console=self.err,
            transient=transient,
            disable=self.plain,
        )

    def claims(self, claims) -> None:
        """The claim rows of a run: verdict, value, interval, threshold, n."""
        if self.json:
            return
        table = Table(title="Claims", show_lines=False)
        for col in ("claim", "kind", "verdict", "value", "95% CI", "threshold", "n", "p"):
            table.add_column(col)
        for _, r in claims.iterrows():
            ci = "" if math.isnan(r["ci_low"]) else f"[{r['ci_low']:.3g}, {r['ci_high']:.3g}] {r['interval']}"
            table.add_row(
                str(r["claim_id"]),
                str(r["kind"]),
                f"[{COLORS.get(r['verdict'], 'white')}]{r['verdict']}[/]",
                f"{r['value']:.4g}",
                ci,
                str(r["threshold"]),
                str(r["n"]),
                "" if math.isnan(r.get("p_value", math.nan)) else f"{r['p_value']:.2g}",
            )
        self.table(table)
        for _, r in claims.iterrows():  # a claim that does not apply here says why, once
            detail = str(r.get("detail", "") or "")
            if r["verdict"] == "not judged" and detail.startswith("not judged: "):
                self.console.print(
                    f"{r['claim_id']} not judged: {escape(detail.removeprefix('not judged: '))}", highlight=False
                )
        self.console.print(
            "[dim]measured: 95% interval over seeds, p the one-sided p-value of the rule's test (null: the "
            "claim is false); exact: maximum error vs tolerance; control and descriptive rows are not evidence[/]"
        )


def finals_table(runs, title: str, most: int = 30) -> Table:
    """Per arm (a sweep's cell): runs finished / in all, and the mean final metrics over the finished
    ones, so that a run on a user's own data or model shows its own results beside the claims. At
    most `most` arms (a search of hundreds of trials is in runs.csv)."""
    table = Table(title=title)
    metrics = [c for c in map(M.final, (M.TRAIN_LOSS, M.VAL_ACC, M.TEST_ACC)) if c in runs and runs[c].notna().any()]
    for col in ("arm", "ok / runs", *(m.removeprefix(M.FINAL_PREFIX) for m in metrics)):
        table.add_column(col)
    groups = list(runs.groupby("arm", sort=False))
    for arm, g in groups[:most]:
        ok = g[g["status"] == "ok"]
        values = [f"{ok[m].astype(float).mean():.4g}" if len(ok) else "" for m in metrics]
        table.add_row(str(arm), f"{len(ok)} / {len(g)}", *values)
    if len(groups) > most:
        table.add_row(f"... {len(groups) - most} more arms", "(runs.csv)", *[""] * len(metrics))
    return table


def eta_seconds(elapsed: Optional[float], completed: float, total: Optional[float]) -> Optional[float]:
    """Time left at the average rate since the start: elapsed x (left / done). Rich's own column
    divides by the rate of the last 30 s, which swings with every burst of finished runs (workers
    report in chunks, an ensemble's members together) and reads 0 while a long run reports nothing."""
    if not elapsed or not completed or not total or completed >= total:
        return 0.0 if total and completed >= total else None
    return elapsed * (total - completed) / completed


class EtaColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        left = eta_seconds(task.elapsed, task.completed, task.total)
        if left is None:
            return Text("-:--:--", style="progress.remaining")
        minutes, seconds = divmod(int(round(left)), 60)
        hours, minutes = divmod(minutes, 60)
        return Text(f"{hours}:{minutes:02d}:{seconds:02d}", style="progress.remaining")


class RunBars:
    """A bar per run in flight (at most --jobs rows) under one overall bar of every step.

    The overall total covers the follow-up stages from the start (`later`: the steps each is
    expected to add, from the plan), so the bar never falls back when a stage begins: that stage's
    real size replaces its planned one."""

    def __init__(self, bars: Progress, later: tuple[int, ...] | list[int] = ()):
        self.bars, self.ids, self.done = bars, {}, {}
        self.later, self.begun, self.stages = list(later), 0, 0
        self.overall: Optional[int] = None  # added when the runs are known: an early error leaves no bar

    @property
    def total(self) -> int:
        return self.begun + sum(self.later)

    def start(self, steps: int) -> None:
        if self.stages and self.later:
            self.later.pop(0)  # this stage was planned: its real size takes the planned one's place
        self.stages += 1
        self.begun += steps
        if self.overall is None:
            self.overall = self.bars.add_task("all runs", total=self.total)
        else:
            self.bars.update(self.overall, total=self.total)

    def progress(self, run_id: str, done: int, total: int) -> None:
        if self.done.get(run_id, -1) >= total:  # finished, its bar gone (a run reports its end twice)
            return
        if run_id not in self.ids:
            self.ids[run_id] = self.bars.add_task(run_id, total=total)
        self.bars.update(self.ids[run_id], completed=done)
        self.bars.advance(self.overall, done - self.done.get(run_id, 0))
        self.done[run_id] = done
        if done >= total:
            self.bars.remove_task(self.ids[run_id])


ui = Output()


def exit_on_crashes(crashed: list[tuple[str, str]], folder: Path, total: Optional[int] = None) -> None:
    """A run that raised is an error (a diverged one is data): the folder is complete, the command
    says which run crashed and where the tracebacks are, and exits 1 so that a CI job fails."""
    if crashed:
        run_id, message = crashed[0]
        if "/" in run_id:  # an ad-hoc grid's run (POINT/RUN): its point's folder holds the log
            folder = Path(folder) / run_id.split("/")[0]
        ui.err.print(
            f"[red]error:[/red] {len(crashed)}{f' of {total}' if total else ''} run(s) crashed; first: {run_id}: "
            f"{escape(message)}; "
            f"tracebacks in {folder}/crashes.log",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1)


def warn(notes: list[str]) -> None:
    for note in notes:
        ui.err.print(f"[yellow]warning:[/yellow] {escape(note)}", highlight=False, soft_wrap=True)


def records(df) -> list[dict]:
    """A table's rows as JSON objects (NaN as null)."""
    import json

    return json.loads(df.to_json(orient="records")) if len(df) else []


def runs_doc(runs) -> list[dict]:
    cols = [c for c in ("run_id", "arm", "seed", "status", "steps_done", "error") if c in runs]
    return records(runs[cols])


def verdicts_table(claims: dict) -> Table:
    """experiment -> its claim rows, as one table of verdicts (what `reproduce` prints at the end)."""
    table = Table(title="Claims")
    for col in ("experiment", "claim", "verdict"):
        table.add_column(col)
    for n, rows in claims.items():
        for _, r in rows.iterrows():
            table.add_row(n, str(r["claim_id"]), f"[{COLORS.get(r['verdict'], 'white')}]{r['verdict']}[/]")
    return table


def rows_table(title: str, columns, rows) -> Table:
    """A titled table of rows of text (bench, cost)."""
    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    return table


def print_outcome(outcome, doc: dict, folder: Path, what: str, as_json: bool) -> None:
    """What run and sweep print at the end: final metrics per arm, the claims, the files, the JSON
    document; then exit 1 if a run crashed."""
    if len(outcome.runs):  # an experiment of tables alone trains no runs
        per = {"grid point": "arm and grid point"}.get(what, what)
        ui.table(finals_table(outcome.runs, f"Final metrics per {per} (mean over finished runs)"))
    ui.claims(outcome.claims)
    bad = outcome.runs[outcome.runs["status"] != "ok"]
    if len(bad) and what == "arm":  # a sweep names each cell that did not finish as it ends
        ui.console.print(
            f"[yellow]{len(bad)} run(s) did not finish normally[/yellow]: "
            + ", ".join(f"{r.run_id} ({r.status})" for r in bad.itertuples())
        )
    cells = ", cells/" if what in ("cell", "grid point") else ""
    where = f"{folder}/POINT/" if what == "grid point" else f"{folder}/"
    ui.console.print(f"files: {where} (runs.csv, metrics.csv, claims.csv, report.md, plots/{cells})")
    if as_json:
        ui.emit({**doc, "folder": str(folder), "runs": runs_doc(outcome.runs), "claims": records(outcome.claims),
                 "crashed": [r for r, _ in outcome.crashes]})  # fmt: skip
    exit_on_crashes(outcome.crashes, folder, len(outcome.runs))


def experiments_table(experiments, shown) -> Table:
    """`normlab list`: each experiment, the claims it tests, its config (as `shown` names it), its question."""
    table = Table(title="normlab experiments")
    table.add_column("experiment", no_wrap=True)
    table.add_column("claims", no_wrap=True)
    table.add_column("config", overflow="fold")  # never cut a path a user will copy
    table.add_column("what it asks")
    for row in experiments.sort_values("experiment").itertuples():
        claims = ", ".join(dict.fromkeys(c.split("-")[0] for c in row.claims))
        table.add_row(row.experiment, claims, shown(Path(row.config)), row.title)
    return table


def chapter_table(statements) -> Table:
    """`normlab list --chapter`: each testable statement of the chapter, its coverage and its rows."""
    table = Table(title="the chapter, statement by statement")
    for col in ("#", "section", "lines", "test", "coverage"):
        table.add_column(col, no_wrap=True)
    table.add_column("statement")
    table.add_column("rows", overflow="fold")
    for s in statements.itertuples():
        rows = ", ".join(s.rows) or (f"planned: {s.planned}" if s.planned else "")
        table.add_row(str(s.n), s.section, s.lines, s.test, s.coverage, s.says, rows)
    return table


def flag_lines(flags: list[dict]) -> list[str]:
    """The lens report's flags for a terminal: one line per flagged layer (or pair of layers), with its
    numbers; 'no flags' when none holds."""
    if not flags:
        return ["lens flags: none (no condition of docs/lens.md holds)"]
    lines = []
    for f in flags:
        for row in f["rows"]:
            where = row.get("layer", row.get("between", ""))
            numbers = ", ".join(
                f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                for k, v in row.items()
                if k not in ("layer", "between")
            )
            lines.append(f"flag: {f['title']}: {escape(str(where))}: {escape(numbers)}")
    return lines
