"""Verdicts of this GPU run beside the CPU reference (results/reference/ at commit cb1dabc, read from
git): there, exp_lr, deep_linear and optimizer_tuning were made from the code the GPU ran (5748315);
kfac from the earlier commit cb6e416. python compare.py > claims_vs_cpu_reference.csv"""

import io
import pathlib
import subprocess
import sys

import pandas as pd

here = pathlib.Path(__file__).parent
CODE = "cb1dabc"  # the commit whose results/reference/ holds the CPU reference compared with
rows = []
for claims in sorted((here / "reproduce").glob("*/claims.csv")):
    gpu = pd.read_csv(claims)
    show = f"{CODE}:results/reference/{claims.parent.name}/claims.csv"
    cpu = pd.read_csv(io.StringIO(subprocess.check_output(["git", "show", show], cwd=here, text=True)))
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
