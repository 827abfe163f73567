"""Verdicts of a GPU session's reproduction beside a CPU reference read from git:

    python results/gpu/compare.py SESSION_FOLDER COMMIT > SESSION_FOLDER/claims_vs_cpu_reference.csv

SESSION_FOLDER/reproduce/*/claims.csv against results/reference/*/claims.csv at COMMIT. The commit
each session compares with, and why, is in that session's README.md."""

import io
import pathlib
import subprocess
import sys

import pandas as pd

session, commit = pathlib.Path(sys.argv[1]), sys.argv[2]
rows = []
for claims in sorted((session / "reproduce").glob("*/claims.csv")):
    gpu = pd.read_csv(claims)
    show = f"{commit}:results/reference/{claims.parent.name}/claims.csv"
    cpu = pd.read_csv(io.StringIO(subprocess.check_output(["git", "show", show], cwd=session, text=True)))
    both = gpu.merge(cpu, on="claim_id", suffixes=("_gpu", "_cpu"))
    for _, r in both.iterrows():
        rows.append(
            {
                "experiment": claims.parent.name,
                "claim_id": r.claim_id,
                "verdict_gpu": r.verdict_gpu,
                "verdict_cpu": r.verdict_cpu,
                "value_gpu": r.value_gpu,
                "value_cpu": r.value_cpu,
                "same_verdict": r.verdict_gpu == r.verdict_cpu,
            }
        )
pd.DataFrame(rows).to_csv(sys.stdout, index=False)
