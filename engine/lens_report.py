"""`normlab lens report FOLDER`: the flags and figures of a lens folder, from lens.csv and lens.json
alone (engine/lens.py wrote them). Each flag names its layers and the numbers behind it:

- scale-invariant layers trained without weight decay: their effective learning rate alpha/||w||^2
  falls as ||w||^2 grows (as 1/sqrt(k) under SGD, Grosse ch. 5, §4.3); how much it has fallen, and
  the slope of log eff_lr against log step over the second half of the probes (about -1/2 there);
- scale-invariant layers with weight decay: the decay sets the effective learning rate at its
  equilibrium (Eqs. 23-25), it is not a penalty the loss feels; per SGD layer the root-mean-square
  angle over the last quarter of the probes against sqrt(2 alpha lambda / (1 + beta)), reached
  when within EQUILIBRIUM_BAND;
- Adam-family groups where epsilon outweighs sqrt(v_hat) for at least EPS_DOMINATES of a layer's
  entries at the last probe (there Adam steps like momentum SGD with the step alpha/eps);
- effective learning rates spread over SPREAD or more: across the invariant layers (their medians)
  or within one layer (q90/q10);
- a layer whose numbers contradict the invariance the module graph gave it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import ConfigError
from .files import atomic_write_text
from . import lens as L
from . import markdown

EQUILIBRIUM_BAND = (0.8, 1.25)  # measured / predicted angle, rms over the last quarter of probes
EPS_DOMINATES = 0.5
SPREAD = 10.0


def _series(table: pd.DataFrame, metric: str, stat: str) -> pd.DataFrame:
    """step x layer of one metric's stat."""
    sub = table[(table["metric"] == metric) & (table["stat"] == stat)]
    return sub.pivot_table(index="step", columns="layer", values="value", aggfunc="first", sort=False)


def _last(table: pd.DataFrame, metric: str, stat: str) -> pd.Series:
    s = _series(table, metric, stat)
    return s.ffill().iloc[-1] if len(s) else pd.Series(dtype=float)


def _fmt(v: float) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.3g}"


def slope_loglog(steps: np.ndarray, values: np.ndarray) -> float:
    """Least-squares slope of log(value) on log(1 + step) over the second half of the points."""
    keep = np.isfinite(values) & (values > 0)
    steps, values = steps[keep], values[keep]
    half = len(steps) // 2
    if len(steps) - half < 3:
        return float("nan")
    x, y = np.log1p(steps[half:]), np.log(values[half:])
    return float(np.polyfit(x, y, 1)[0])


def flags(table: pd.DataFrame, manifest: dict) -> list[dict]:
    """Every flag: {"title", "text", "rows": [{layer: ..., numbers}]} in the order the report shows them."""
    found = (flag(table, manifest) for flag in FLAGS)
    return [f for f in found if f is not None]


def _invariant_layers(table: pd.DataFrame) -> list[str]:
    return [n for n, v in _last(table, L.SCALE_INVARIANT, "value").items() if v == 1]


def _flag(rows: list[dict], title: str, text: str) -> dict | None:
    return {"title": title, "text": text, "rows": rows} if rows else None


def _flag_implicit_decay(table: pd.DataFrame, manifest: dict) -> dict | None:
    """Scale-invariant layers trained without weight decay: their effective learning rate decays (§4.3)."""
    wd = _last(table, L.WEIGHT_DECAY, "value")
    eff = _series(table, L.EFF_LR, "median")
    eff_layer = _series(table, L.EFF_LR, "value")
    ang = _series(table, L.ANGULAR_UPDATE, "median")
    wn2 = _series(table, L.WEIGHT_NORM_SQ, "median")

    def curve(frame: pd.DataFrame, other: pd.DataFrame, name: str) -> pd.Series:
        if name in other.columns:
            return other[name].dropna()
        return frame[name].dropna() if name in frame.columns else pd.Series(dtype=float)

    rows = []
    for name in _invariant_layers(table):
        if wd.get(name, 0.0) != 0.0:
            continue
        e = curve(eff, eff_layer, name)
        w = wn2[name].dropna() if name in wn2 else pd.Series(dtype=float)
        a = ang[name].dropna() if name in ang else pd.Series(dtype=float)
        row = {"layer": name, "||w||^2 grew": _ratio(w), "angle fell": _ratio(a, inverse=True)}
        if len(e):
            row["eff_lr fell"] = _ratio(e, inverse=True)
            row["slope (log eff_lr vs log k)"] = slope_loglog(e.index.to_numpy(float), e.to_numpy(float))
        rows.append(row)
    return _flag(
        rows,
        "Scale-invariant layers trained without weight decay: the effective learning rate decays",
        "The loss ignores these layers' scale, so their gradient is orthogonal to the weights and "
        "every step lengthens them; the step's angle (and, under SGD, alpha/||w||^2) shrinks as "
        "||w||^2 grows, as 1/sqrt(k) for SGD (Grosse ch. 5, §4.3). The training sees an implicit "
        "learning-rate decay it was not given. Factors are first probe to last; the slope is "
        "fitted over the second half of the probes (-0.5 is the 1/sqrt(k) law).",
    )


def _flag_equilibrium(table: pd.DataFrame, manifest: dict) -> dict | None:
    """Scale-invariant layers under weight decay: Eq. 25's equilibrium angle, predicted and measured."""
    wd = _last(table, L.WEIGHT_DECAY, "value")
    angle = _series(table, L.WD_EQUILIBRIUM_ANGLE, "value")
    ratio = _series(table, L.WD_EQUILIBRIUM_RATIO, "value")
    rows = []
    for name in _invariant_layers(table):
        if wd.get(name, 0.0) == 0.0:
            continue
        row = {"layer": name, "weight decay": wd[name], "optimizer": manifest.get("optimizer", "?")}
        if name in ratio.columns:
            r = ratio[name].dropna()
            tail = r.iloc[-max(1, len(r) // 4) :]
            rms = float(np.sqrt(np.mean(np.square(tail.to_numpy(float)))))
            reached = EQUILIBRIUM_BAND[0] <= rms <= EQUILIBRIUM_BAND[1]
            row.update({"predicted angle": float(angle[name].dropna().iloc[-1]), "measured / predicted": rms,
                        "at equilibrium": "yes" if reached else "not yet"})  # fmt: skip
        else:
            row["at equilibrium"] = "not computed (Eq. 25 is for SGD)"
        rows.append(row)
    return _flag(
        rows,
        "Weight decay on scale-invariant layers: it sets the effective learning rate, it is not a penalty",
        "On these layers the loss does not depend on ||w||, so decay cannot trade loss for smaller "
        "weights; it shrinks ||w|| until the growth from the gradient balances it (Eq. 23), where each "
        "step turns a unit by sqrt(2 alpha lambda) (Eq. 25; over 1 + beta with momentum beta). "
        "Changing lambda changes the equilibrium learning rate. Measured: the root-mean-square angle "
        f"over the last quarter of the probes, against the prediction; 'yes' within "
        f"{EQUILIBRIUM_BAND[0]}-{EQUILIBRIUM_BAND[1]}x. A layer not there yet is still in its "
        "transient (about 1/(2 alpha lambda) steps).",
    )


def _flag_eps_dominates(table: pd.DataFrame, manifest: dict) -> dict | None:
    """Adam groups where epsilon is as large as sqrt(v_hat) for most entries."""
    share = _last(table, L.ADAM_EPS_SHARE, "value")
    eps = {e["layer"]: e["group"].get("eps") for e in manifest.get("layers", [])}
    rows = [{"layer": n, "share of entries with eps >= sqrt(v_hat)": float(v), "eps": eps.get(n)}
            for n, v in share.items() if v >= EPS_DOMINATES]  # fmt: skip
    return _flag(
        rows,
        "Adam groups where epsilon dominates",
        f"For at least {EPS_DOMINATES:.0%} of these layers' entries epsilon is as large as the "
        "gradient's root mean square sqrt(v_hat) at the last probe: there the update is close to "
        "alpha m_hat / eps, momentum SGD with step alpha/eps, not an adaptive method. A smaller eps "
        "(or a look at why the gradients are this small) restores the per-entry scaling.",
    )


def _flag_lr_spread(table: pd.DataFrame, manifest: dict) -> dict | None:
    """Effective learning rates an order of magnitude apart, between layers or between one layer's units."""
    medians = _last(table, L.EFF_LR, "median")
    whole = _last(table, L.EFF_LR, "value")
    per_layer = {**medians.dropna().to_dict(), **whole.dropna().to_dict()}
    rows = []
    disagree = set(_disagreeing(manifest))

    def source(*layers: str) -> dict:
        """Where the spread comes from layers whose numbers disagree with the graph, say so."""
        bad = [n for n in layers if n in disagree]
        return {"note": f"{', '.join(bad)}: numbers disagree with the graph (see that flag)"} if bad else {}

    if len(per_layer) >= 2:
        lo, hi = min(per_layer, key=per_layer.get), max(per_layer, key=per_layer.get)
        if per_layer[hi] >= SPREAD * per_layer[lo]:
            rows.append({"between": f"{lo} .. {hi}", "lowest eff_lr": per_layer[lo], "highest eff_lr": per_layer[hi],
                         "ratio": per_layer[hi] / per_layer[lo], **source(lo, hi)})  # fmt: skip
    q10, q90 = _last(table, L.EFF_LR, "q10"), _last(table, L.EFF_LR, "q90")
    for name in q10.index:
        if q10[name] > 0 and q90[name] >= SPREAD * q10[name]:
            rows.append({"between": f"units of {name} (q10 .. q90)", "lowest eff_lr": q10[name],
                         "highest eff_lr": q90[name], "ratio": q90[name] / q10[name], **source(name)})  # fmt: skip
    return _flag(
        rows,
        "Effective learning rates spread over an order of magnitude or more",
        "One alpha, many effective learning rates: alpha/||w||^2 differs by the factor shown (last "
        "probe), so some layers or units train far faster than others (Grosse ch. 5, §4.3: different "
        "weights have different gradient magnitudes, so different effective learning rates).",
    )


def _flag_graph_disagrees(table: pd.DataFrame, manifest: dict) -> dict | None:
    """Layers whose |cos(w, g)| contradicts what the module graph says about their invariance."""
    rows = []
    for entry in manifest.get("layers", []):
        if entry["layer"] in _disagreeing(manifest):
            check = entry["numeric_check"]
            said = "invariant" if entry.get("scale_invariant") else "not invariant"
            rows.append({"layer": entry["layer"], "module graph": said,
                         "largest median |cos(w, g)|": check["max_median_abs_cos"],
                         "tolerance": check["tolerance"], "cause": _cause(entry)})  # fmt: skip
    return _flag(
        rows,
        "Layers whose numbers disagree with the module graph",
        "An invariant layer's gradient is orthogonal to its weights (|cos| near 0, Eq. 16). The cause "
        "column says, from the normalizer the graph found behind each layer as it ran at the probes, "
        f"why it is not: a normalizer in eval mode (running statistics), or an epsilon that is not small "
        f"against its units' variance (eps / (var + eps) over {EPS_NOT_SMALL:g} for the median unit). Where "
        "the graph says not invariant and |cos| stays tiny, the graph could not prove an invariance that holds.",
    )


# A normalizer's eps / (var + eps) for the median unit above this keeps part of the scale: the gradient's
# part along w grows with that share, so it is held to the tolerance |cos(w, g)| itself is judged by
EPS_NOT_SMALL = L.COS_TOLERANCE


def _disagreeing(manifest: dict) -> list[str]:
    return [e["layer"] for e in manifest.get("layers", []) if e.get("numeric_check", {}).get("agrees") is False]


def _cause(entry: dict) -> str:
    """Why a layer's |cos(w, g)| disagrees with the graph, with the numbers the lens measured."""
    norm = entry.get("normalizer")
    if not entry.get("scale_invariant"):
        return "the graph could not prove an invariance that holds"
    if not norm:
        return "no normalizer observed at the probes"
    if not norm["training"]:
        return (f"{norm['module']} normalized with its running statistics (eval mode) at the probes: "
                "model.eval() while training; the batch's statistics are what make the layer invariant")  # fmt: skip
    if norm["eps_share_median"] > EPS_NOT_SMALL:
        return (f"{norm['module']}'s eps {norm['eps']:g} is not small against its units' variance (median "
                f"{norm['var_median']:.3g}): eps / (var + eps) {norm['eps_share_median']:.2g} for the median unit, "
                f"up to {norm['eps_share_max']:.2g}, so eps keeps part of the scale")  # fmt: skip
    return (f"neither {norm['module']}'s mode (training) nor its eps (eps / (var + eps) "
            f"{norm['eps_share_median']:.2g} for the median unit) explains it")  # fmt: skip


def _flag_detached(table: pd.DataFrame, manifest: dict) -> dict | None:
    """Invariant layers behind a normalizer whose statistic is detached from backprop."""
    rows = [
        {"layer": e["layer"], "detached at": e["numeric_check"]["detached"],
         "largest median |cos(w, g)|": e["numeric_check"]["max_median_abs_cos"]}
        for e in manifest.get("layers", []) if e.get("numeric_check", {}).get("detached")
    ]  # fmt: skip
    return _flag(
        rows,
        "Invariant layers whose normalizer's statistic is detached from backprop",
        "The module graph finds a normalizer that makes the loss ignore these layers' weight scale, but a "
        "statistic it subtracts or divides by is left out of backprop at the node named. The loss is still "
        "invariant; its gradient is not orthogonal to the weights (Eq. 16 needs the whole statistics path: along "
        "w the direct path, the mean's and the variance's cancel only together), so the norm need not grow and "
        "the effective learning rate does not decay as Eq. 19 says (Grosse ch. 5, §4.2-4.3).",
    )


FLAGS = (
    _flag_implicit_decay, _flag_equilibrium, _flag_eps_dominates, _flag_lr_spread, _flag_graph_disagrees,
    _flag_detached,
)  # fmt: skip


def _ratio(s: pd.Series, inverse: bool = False) -> float:
    if len(s) < 2 or s.iloc[0] <= 0 or s.iloc[-1] <= 0:
        return float("nan")
    return float(s.iloc[0] / s.iloc[-1] if inverse else s.iloc[-1] / s.iloc[0])


SHOWN_LAYERS = 8  # at most this many layers drawn as labelled lines; any others as one band


def shown_layers(order: list[str], found: list[dict]) -> list[str]:
    """The layers the figure draws as lines: all of a small network; of a large one the flagged layers,
    then the first, the last and a few evenly spaced by depth, SHOWN_LAYERS in all, in depth order."""
    if len(order) <= SHOWN_LAYERS:
        return order
    flagged = [n for f in found for r in f["rows"] for n in [r.get("layer")] if n in order]
    picks = list(dict.fromkeys(flagged))[: SHOWN_LAYERS - 2]
    picks += [n for n in (order[0], order[-1]) if n not in picks]
    for i in np.linspace(0, len(order) - 1, SHOWN_LAYERS).round().astype(int):
        if len(picks) < SHOWN_LAYERS and order[i] not in picks:
            picks.append(order[i])
    return [n for n in order if n in picks]


def figure(table: pd.DataFrame, manifest: dict, path: Path, found: list[dict] | None = None) -> Path:
    """lens.png: ||w||^2, eff_lr (log-log, with the 1/sqrt(k) slope), the angular update (with the
    equilibrium angles) and, for Adam, epsilon's share: a labelled line per shown layer (`shown_layers`:
    the flagged ones and a few by depth) coloured by depth, the other layers as one grey band."""
    from . import plots

    order = [e["layer"] for e in manifest.get("layers", [])] or sorted(table["layer"].unique())
    shown = shown_layers(order, found or [])
    invariant = _last(table, L.SCALE_INVARIANT, "value")
    share = _series(table, L.ADAM_EPS_SHARE, "value")
    panels = [("||w||^2 (median over units)", L.WEIGHT_NORM_SQ, "median", True),
              ("effective LR alpha/||w||^2 (median)", L.EFF_LR, "median", True),
              ("angle turned per step (median over units)", L.ANGULAR_UPDATE, "median", True)]  # fmt: skip
    if len(share):
        panels.append(("Adam: share of entries with eps >= sqrt(v_hat)", L.ADAM_EPS_SHARE, "value", False))
    fig, axes = plots.figure(ncols=len(panels), width=3.9, height=3.1)
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    colour = {n: cmap(i / max(1, len(order) - 1) * 0.9) for i, n in enumerate(order)}
    for ax, (title, metric, stat, log) in zip(axes[0], panels):
        frame = _series(table, metric, stat)
        if metric == L.EFF_LR:
            frame = frame.combine_first(_series(table, L.EFF_LR, "value"))
        rest = [n for n in order if n in frame.columns and n not in shown]
        if rest:  # the layers not drawn as lines: the range they span at each step
            band = frame[rest].where(frame[rest] > 0) if log else frame[rest]
            lo, hi = band.quantile(0.1, axis=1), band.quantile(0.9, axis=1)
            ok = lo.notna() & hi.notna()
            ax.fill_between(frame.index[ok] + 1, lo[ok], hi[ok], color="#bbbbbb", alpha=0.5, lw=0,
                            label=f"{len(rest)} other layers (10-90%)")  # fmt: skip
        for name in [n for n in shown if n in frame.columns]:
            s = frame[name].dropna()
            s = s[s > 0] if log else s
            if not len(s):
                continue
            dashed = invariant.get(name, 0) != 1
            ax.plot(s.index + 1, s.to_numpy(), color=colour[name], lw=1.2, ls="--" if dashed else "-", label=name)
        if metric == L.ANGULAR_UPDATE:
            eq = _series(table, L.WD_EQUILIBRIUM_ANGLE, "value")
            for value in sorted(set(np.round(eq.ffill().iloc[-1].dropna().to_numpy(float), 12))) if len(eq) else []:
                ax.axhline(value, color="#d62728", lw=1, ls=":", label=f"sqrt(2 alpha lambda/(1+beta)) = {value:.3g}")
        if metric == L.EFF_LR and len(frame):
            x = frame.index.to_numpy(float) + 1
            y0 = np.nanmedian(frame.iloc[len(frame) // 2].to_numpy(float))
            if np.isfinite(y0) and y0 > 0 and len(x) > 2:
                xm = x[len(frame) // 2]
                ax.plot(x, y0 * np.sqrt(xm / x), color="#888", lw=1, ls=":", label="slope -1/2")
        ax.set_title(title)
        ax.set_xlabel("step + 1")
        if log:
            ax.set_xscale("log")
            ax.set_yscale("log")
        plots.legend(ax, fontsize=7)
    if len(shown) < len(order):
        fig.suptitle(f"{len(shown)} of {len(order)} layers (the flagged ones and a few by depth, coloured by depth), "
                     "the rest as a grey band; dashed: not scale invariant")  # fmt: skip
    else:
        fig.suptitle("dashed: layers the loss is not scale invariant to")
    return plots.save(fig, path)


def _table(rows: list[dict]) -> list[str]:
    """Dicts as a Markdown table, one column per key (in first-seen order)."""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    cell = lambda v: _fmt(v) if isinstance(v, float) else str(v).replace("|", "\\|")  # noqa: E731
    return markdown.table([cell(c) for c in cols], [[cell(r.get(c, "")) for c in cols] for r in rows])


def _parameter_lines(params: dict | None) -> list[str]:
    """Every tensor the optimizer steps: those measured as layers, and the rest counted by kind."""
    if not params:
        return []
    rest = "; ".join(f"{kind} {v['count']} ({', '.join(f'`{n}`' for n in v['names'][:4])}"
                     f"{', ...' if v['count'] > 4 else ''})" for kind, v in params["by_kind"].items())  # fmt: skip
    return ["", "## Parameters", "",
            f"The optimizer steps {params['stepped']} tensors: {params['measured']} measured above as layers"
            + (f"; the rest by kind: {rest}." if rest else ".")]  # fmt: skip


def write_report(folder: Path, out: Path | None = None, overwrite: bool = False) -> list[Path]:
    table, manifest = L.read(folder)
    out = out or folder
    md_path, html_path = out / "report.md", out / "report.html"
    if not overwrite and (md_path.exists() or html_path.exists()):
        raise ConfigError(f"out: {md_path} exists; pass --overwrite to replace it")
    if table.empty:
        raise ConfigError(f"{folder}: lens.csv holds no probe yet; train at least one step with the lens attached")
    out.mkdir(parents=True, exist_ok=True)
    found = flags(table, manifest)
    fig_path = figure(table, manifest, out / "lens.png", found)
    steps = table["step"]
    md = ["# normlab lens report", ""]
    md.append(f"{folder}: {manifest.get('model', '?')} trained by {manifest.get('optimizer', '?')}; "
              f"{table['step'].nunique()} probes every {manifest.get('every', '?')} steps, steps "
              f"{int(steps.min())}-{int(steps.max())} of {manifest.get('steps_seen', '?')} seen.")  # fmt: skip
    if not manifest.get("closed"):
        md += ["", "**The lens was not closed** (no lens.json): the loop may have stopped early; the numbers "
               "below are every probe written before that."]  # fmt: skip
    md += ["", "## Flags", ""]
    md += [f"- {f['title']}" for f in found] if found else ["- none: no condition in the list below holds"]
    for f in found:
        md += ["", f"### {f['title']}", "", f["text"], ""] + _table(f["rows"])
    md += ["", "## Layers", ""]
    last = {m: _last(table, m, s) for m, s in ((L.WEIGHT_NORM_SQ, "median"), (L.EFF_LR, "median"),
                                                 (L.ANGULAR_UPDATE, "median"), (L.GRAD_COS, "median"),
                                                 (L.ADAM_EPS_SHARE, "value"))}  # fmt: skip
    rows = []
    for e in manifest.get("layers", []):
        n = e["layer"]
        row = {
            "layer": n, "module": e["module"], "shape": "x".join(map(str, e["shape"])),
            "scale invariant": {"unit": "per unit", "layer": "whole matrix", None: "no"}[e["invariance"]]
            if e["scale_invariant"] is not None else "?",
            "found by": e["found_by"] or "-",
            "max median abs cos(w, g)": e["numeric_check"]["max_median_abs_cos"],
            "||w||^2": last[L.WEIGHT_NORM_SQ].get(n), "angle": last[L.ANGULAR_UPDATE].get(n),
            # what each optimizer family has: alpha/||w||^2 for SGD's invariant layers, epsilon's share for Adam's
            "eff_lr": last[L.EFF_LR].get(n), "eps share": last[L.ADAM_EPS_SHARE].get(n),
        }  # fmt: skip
        rows.append({k: v for k, v in row.items() if v is not None or k not in ("eff_lr", "eps share")})
    md += _table([{k: (float(v) if isinstance(v, (np.floating,)) else v) for k, v in r.items()} for r in rows])
    md += ["", "Last probe's medians over units (eff_lr: alpha / ||w||^2, for SGD's scale-invariant layers; eps "
           "share: the share of entries whose epsilon is at least sqrt(v_hat), for Adam's). Why each layer is or is "
           "not scale invariant:", ""]  # fmt: skip
    md += [f"- `{e['layer']}` ({e.get('tensor', e['layer'])}; decided by {e['found_by'] or 'nothing yet'}): "
           f"{e['reason']}" + (f"; the same tensor as {', '.join(e['shared_with'])}, reported once here"
                               if e.get("shared_with") else "") for e in manifest.get("layers", [])]  # fmt: skip
    if manifest.get("wrappers"):
        md += ["", f"The model was wrapped ({' in '.join(manifest['wrappers'])}): layers are named as the module "
               "inside names them, and its graph was read there."]  # fmt: skip
    md += _parameter_lines(manifest.get("parameters"))
    md += ["", "## Figure", "", f"![lens]({fig_path.name})", "",
           "Metrics, stats and their definitions: docs/lens.md; every number here is in lens.csv "
           "(step, layer, metric, stat, value)."]  # fmt: skip
    text = "\n".join(md) + "\n"
    atomic_write_text(md_path, text)

    body = markdown.render("\n".join(markdown.embed_image(x, out) for x in text.split("\n")))
    atomic_write_text(html_path, markdown.page("normlab lens report", body, width=1200))
    return [md_path, html_path, fig_path]
