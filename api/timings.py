"""The times normlab quotes (in `--help`, README.md and docs/), measured, in one place.

Each figure is a measurement on the reference machine (2 CPU cores, `--jobs 2`), and
tests/test_readme.py holds it to its source: the reproduction's minutes to the sum of the committed
reference manifests' wall times (results/reference/*/manifest.json) plus the time outside them,
and every quoted text to the constants here. Change a number here, after measuring it, and the
texts follow; a text that quotes another number fails the test.
"""

REFERENCE_CORES = 2  # the machine behind results/reference/ and these figures

# `normlab reproduce --jobs 2`: the twenty experiments side by side in one pool of two workers
# (1,839 s from commit 1a71f8c, 2026-12-05). Its schedule (engine.costs.SHIPPED_SCHEDULE, package data
# and `normlab cost`'s default; a test replays it) took 1,828 s; loading the configs and writing the
# reports add the rest.
OUTSIDE_SCHEDULE_S = 11  # the seconds before the pool's first piece and after its last
REPRODUCE_MINUTES = 31

# `normlab reproduce --smoke`: every experiment at its smoke settings (71 s in the latest run, 2026-12-05,
# twenty experiments, the datasets already cached).
REPRODUCE_SMOKE_SECONDS = 71


def reproduce_text() -> str:
    return f"about {REPRODUCE_MINUTES} minutes on {REFERENCE_CORES} cores"


def smoke_text() -> str:
    return f"about {REPRODUCE_SMOKE_SECONDS} seconds"
