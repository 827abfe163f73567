"""Verdicts of this GPU reproduction beside the CPU reference: python compare.py > claims_vs_cpu_reference.csv"""

import pathlib
import sys

import pandas as pd

here = pathlib.Path(__file__).parent
reference = here.parents[1] / "reference"
rows = []
for claims in sorted((here / "reproduce").glob("*/claims.csv")):
    gpu = pd.read_csv(claims)
    cpu = pd.read_csv(reference / claims.parent.name / "claims.csv")
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
