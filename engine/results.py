"""Run folders and their files. Everything downstream (claims, plots, report) reads only these.

results/<experiment>/<run-name>/
  config.yaml    the fully resolved config        manifest.json  versions, commit, host, timing
  runs.csv       one row per training run         metrics.csv    long format, one row per value
  claims.csv     one row per claim                plots/*.png    report.md

A run folder is built under `<name>.partial/` and renamed into place when complete, so a crash
or Ctrl-C never leaves a folder that looks finished (and the same command resumes from it).
Single files are written to a temporary name and renamed (atomic on POSIX).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pandas as pd
import yaml

from . import metrics as M
from .errors import NormlabError
from .files import atomic_write_text
from .runs import RunResult

# `item` says which one of several values a row is (a unit's index, an eigenvalue's rank); metrics
# files written before it was renamed call it `unit`, and are read the same way.
METRIC_COLUMNS = ["run_id", "arm", "seed", "step", "metric", "layer", "stat", "item", "value"]
LEGACY_METRIC_COLUMNS = {"unit": "item"}
CLAIM_COLUMNS = [
    "claim_id",
    "kind",
    "statement",
    "statistic",
    "value",
    "threshold",
    "op",
    "bound_low",
    "bound_high",
    "ci_low",
    "ci_high",
    "interval",
    "n",
    "verdict",
    "detail",
    "n_to_decide",
    "distance_hw",
    "p_value",
    "p_against",
    "test",
]
FINAL_COLUMNS = [M.final(name) for name in M.EVALUATION]
FLOAT_FORMAT = "%.9g"  # enough digits to round-trip float32 values


def atomic_write_csv(path: Path, df: pd.DataFrame, fault_point: str = "") -> None:
    atomic_write_text(path, df.to_csv(index=False, float_format=FLOAT_FORMAT, lineterminator="\n"), fault_point)


def git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        commit = out.stdout.strip()
        if out.returncode != 0 or not commit:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


# Packages whose version can change a number or a figure normlab writes ("-" when not installed).
RESULT_SHAPING = (
    "normlab", "torch", "numpy", "pandas", "scipy", "matplotlib", "mnist1d", "torchvision",
    "curvlinops-for-pytorch", "PyYAML", "ray",
)  # fmt: skip


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in RESULT_SHAPING:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "-"
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def accelerator_info() -> dict[str, Any]:
    """The GPU and CUDA (or none), as torch sees them."""
    import torch

    if not torch.cuda.is_available():
        return {"gpu": None, "cuda": torch.version.cuda}
    return {"gpu": torch.cuda.get_device_name(0), "gpu_count": torch.cuda.device_count(), "cuda": torch.version.cuda}


def sha256_of(obj: Any) -> str:
    """A stable hash of a JSON-able object (a resolved config): sorted keys, no whitespace."""
    import hashlib

    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def dataset_sha256(data: Any) -> str:
    """Hash of a loaded dataset's arrays (inputs and labels of every split), in a fixed order."""
    import hashlib

    h = hashlib.sha256()
    for name in ("x_train", "y_train", "x_test", "y_test"):
        t = getattr(data, name).detach().cpu().contiguous()
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def results_root() -> Path:
    """Where results go unless --out says otherwise: $NORMLAB_RESULTS, else ./results."""
    return Path(os.environ.get("NORMLAB_RESULTS") or "results")


def default_run_dir(root: Path, experiment: str, smoke: bool) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(root) / experiment / (f"{stamp}-smoke" if smoke else stamp)


def ensure_free(final: Path) -> None:
    final = Path(final)
    if final.exists() and (not final.is_dir() or any(final.iterdir())):
        raise NormlabError(
            f"output folder {final} already exists and is not empty; choose another output folder ({{out}}) or "
            "remove it"
        )


def runs_frame(results: list[RunResult], hyper: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per run: identity, hyperparameters (`hyper[run_id]`), status and final metrics."""
    rows = []
    for r in results:
        row = {"run_id": r.run_id, "arm": r.arm, "seed": r.seed}
        row.update(hyper.get(r.run_id, {}))
        row.update({"status": r.status, "steps_done": r.steps_done, "train_seconds": round(r.train_seconds, 3)})
        row.update({M.final(k): v for k, v in r.final.items()})
        row["error"] = r.error.splitlines()[0] if r.error else ""
        rows.append(row)
    return pd.DataFrame(rows)


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    atomic_write_text(folder / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n")


@dataclass
class Tables:
    """Everything an analysis or a plot may read: the files of one run folder."""

    folder: Path
    config: dict
    manifest: dict
    runs: pd.DataFrame
    metrics: pd.DataFrame

    def __post_init__(self) -> None:
        # Runs that failed before their first evaluation have no final metrics; when every run
        # failed, the columns are absent altogether. Analyses see them as missing values.
        missing = [c for c in FINAL_COLUMNS if c not in self.runs]
        if missing:
            self.runs = self.runs.assign(**{c: float("nan") for c in missing})

    def read(self, name: str) -> pd.DataFrame:
        """A further table of the run folder (NAME.csv), e.g. exact theory curves."""
        path = self.folder / f"{name}.csv"
        if not path.is_file():
            raise NormlabError(f"{self.folder} lacks {name}.csv; it is written by `normlab run`")
        return pd.read_csv(path)

    def has(self, metric: str) -> bool:
        """Whether any run of this folder wrote `metric` (a name from engine/metrics.py)."""
        return metric in self._written()

    def _written(self) -> frozenset:
        """The metric names in `metrics`, computed once per table (an analysis may swap the table)."""
        cached = getattr(self, "_names", None)
        if cached is None or cached[0] is not self.metrics:
            names = frozenset(self.metrics["metric"].unique()) if len(self.metrics) else frozenset()
            self._names = cached = (self.metrics, names)
        return cached[1]

    def series(self, metric: str, stat: Optional[str] = None, layer: Optional[str] = None) -> pd.DataFrame:
        """The metrics.csv rows of `metric` (of one `stat` and one `layer`, where given). A name the
        engine never writes is an error (a mistyped metric must not read as missing data); a known
        one that no run wrote here (every run diverged at its first step, a probe this config has
        off) gives an empty table, which analyses report as missing, with the reason."""
        if metric not in M.ALL:
            raise NormlabError(f"metric {metric!r} is not one the engine writes; see engine/metrics.py")
        m = self.metrics
        sel = m["metric"] == metric
        if stat is not None:
            sel &= m["stat"] == stat
        if layer is not None:
            sel &= m["layer"].fillna("") == layer
        return m.loc[sel]

    def curve(self, metric: str, layer: str = "", stat: str = "value") -> pd.DataFrame:
        """One whole-network (or one layer's) series per run: run_id, arm, seed, step, value."""
        return self.series(metric, stat, layer)[["run_id", "arm", "seed", "step", "value"]]


CLAIM_NUMERIC = (
    "value", "ci_low", "ci_high", "bound_low", "bound_high", "n_to_decide", "distance_hw", "p_value", "p_against"
)  # fmt: skip


def read_claims(folder: Path) -> pd.DataFrame:
    """claims.csv: numbers where numbers are ('nan' is missing), text kept as written elsewhere."""
    return pd.read_csv(
        Path(folder) / "claims.csv", keep_default_na=False, na_values={c: ["nan", "NaN", ""] for c in CLAIM_NUMERIC}
    )


def read_runs(folder: Path) -> pd.DataFrame:
    """runs.csv of a run folder: the one reader of it (load_tables, the cost records, crash lists)."""
    return pd.read_csv(Path(folder) / "runs.csv", keep_default_na=True)


def load_tables(folder: Path, metrics: bool = True) -> Tables:
    """The one reader of a run folder (config, manifest, runs and, unless metrics=False, metrics)."""
    folder = Path(folder)
    # large committed reference results are compressed: gzip, or xz where gzip would pass 5 MiB
    metrics_path = next(
        (folder / n for n in ("metrics.csv", "metrics.csv.gz", "metrics.csv.xz") if (folder / n).is_file()),
        folder / "metrics.csv",
    )
    missing = [
        n
        for n, p in (
            ("config.yaml", folder / "config.yaml"),
            ("runs.csv", folder / "runs.csv"),
            ("metrics.csv", metrics_path),
        )
        if not p.is_file() and (metrics or n != "metrics.csv")
    ]
    if not folder.is_dir() or missing:
        what = "does not exist" if not folder.is_dir() else f"lacks {', '.join(missing)}"
        raise NormlabError(
            f"{folder} {what}; pass a run folder written by `normlab run` (e.g. results/<experiment>/<run-name>)"
        )
    config = yaml.safe_load((folder / "config.yaml").read_text()) or {}
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    runs = read_runs(folder)
    if not metrics:
        return Tables(folder, config, manifest, runs, pd.DataFrame(columns=METRIC_COLUMNS))
    table = pd.read_csv(
        metrics_path, dtype={"layer": str, "stat": str}, keep_default_na=False, na_values={"value": ["nan", "NaN", ""]}
    )
    table = table.rename(columns=LEGACY_METRIC_COLUMNS)
    if "item" in table:
        table["item"] = pd.to_numeric(table["item"], errors="coerce").astype("Int64")
    return Tables(folder, config, manifest, runs, table)


# CPU features that select torch's and the BLAS's kernels (and so the order of their sums)
KERNEL_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512bw", "avx512vl", "avx512_vnni",
    "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8",
)  # fmt: skip


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def arithmetic_info() -> dict[str, Any]:
    """What decides the rounding of a run beyond the versions: the kernels torch dispatches to (its
    CPU capability), the BLAS and oneDNN builds, the CPU flags that select kernels, and the thread
    counts. Two machines that agree on all of it and on the versions give the same bytes; where
    they differ, results move at the rounding level (and verdicts near a threshold may move)."""
    import re

    import numpy as np
    import torch

    build = torch.__config__.show()
    blas = re.search(r"BLAS_INFO=(\w+)", build)
    find = lambda *keys: next(  # noqa: E731
        (ln.strip(" -") for ln in build.splitlines() if any(k in ln for k in keys)), ""
    )
    try:
        numpy_blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        numpy_blas = f"{numpy_blas.get('name', '')} {numpy_blas.get('version', '')}".strip()
    except Exception:  # older numpy: no dict mode
        numpy_blas = ""
    return {
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_blas": blas.group(1) if blas else "",
        "torch_blas_build": find("Math Kernel Library", "OpenBLAS", "BLIS", "Accelerate"),
        "torch_onednn": find("MKL-DNN", "oneDNN"),
        "numpy_blas": numpy_blas,
        "cpu_kernel_flags": [f for f in KERNEL_FLAGS if f in _cpu_flags()],
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "thread_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ},
    }


def host_info() -> dict[str, Any]:
    return {
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpus": os.cpu_count(),
        **accelerator_info(),
        "arithmetic": arithmetic_info(),
        "argv": sys.argv,
    }
