"""How a command runs, in one place, in the order a reader follows it from `normlab run` to claims.csv.

1. load.py       a config or sweep file + dotted overrides -> the experiment and its typed config
2. plan.py       `Plan`: the resolved config, its first stage's runs built once, the device and
                 override-reach checks, the output folder; nothing is written yet
3. run.py        `run_experiment` / `run_sweep` -> `run_cells`: derived tables, each stage's cells
                 trained (engine/executor.py) and stored (engine/cells.py), runs.csv, metrics.csv and
                 manifest.json; then `finish`: analyze -> claims.csv, plot -> plots/, report.md
4. reproduce.py  every experiment's default plan, one after another or side by side in one pool,
                 then the combined report

The experiments' registry is handed in by the caller (the API), so the engine names none. The
contract an experiment implements is engine/experiment.py.
"""

from .load import config_path, load_config, load_sweep, sweep_path, SWEEP_ROOT
from .plan import Plan, command_overrides, plan, plan_grid, plan_sweep
from .run import CRASH_LOG, Outcome, crashes, finish, partial_folder, run_cells, run_experiment, run_sweep
from .reproduce import Reproduction, reproduce

__all__ = [
    "CRASH_LOG",
    "Outcome",
    "Plan",
    "Reproduction",
    "SWEEP_ROOT",
    "command_overrides",
    "config_path",
    "crashes",
    "finish",
    "load_config",
    "load_sweep",
    "partial_folder",
    "plan",
    "plan_grid",
    "plan_sweep",
    "reproduce",
    "run_cells",
    "run_experiment",
    "run_sweep",
    "sweep_path",
]
