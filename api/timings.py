"""The times normlab quotes (in `--help`, README.md and docs/), measured, in one place.

Each figure is a measurement on the reference machine (2 CPU cores, `--jobs 2`), and
tests/test_readme.py holds it to its source: the reproduction's minutes to the sum of the committed
reference manifests' wall times (results/reference/*/manifest.json) plus the time outside them,
and every quoted text to the constants here. Change a number here, after measuring it, and the
texts follow; a text that quotes another number fails the test.
"""

REFERENCE_CORES = 2  # the machine behind results/reference/ and these figures

# `normlab reproduce`: the thirteen experiments one after another. Their manifests add up to about
# 35.6 minutes; process starts, analysis, figures and reports add 4-8 s per experiment.
OUTSIDE_MANIFESTS_S = 100  # the seconds outside the manifests' clocks, all thirteen together
REPRODUCE_MINUTES = 37

# `normlab reproduce --smoke`: every experiment at its smoke settings (93 s in the latest run).
REPRODUCE_SMOKE_SECONDS = 100


def reproduce_text() -> str:
    return f"about {REPRODUCE_MINUTES} minutes on {REFERENCE_CORES} cores"


def smoke_text() -> str:
    return f"about {REPRODUCE_SMOKE_SECONDS} seconds"
