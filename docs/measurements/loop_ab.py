"""A/B: the single-run loop of this checkout against the one of another commit, in interleaved
pairs on the bench's model (MLP 40-100-100-10 + BN, batch 128, SGD, one thread), probes off and
every 50 steps, and whether the two give the same rows to the last bit.

    python docs/measurements/loop_ab.py e2f4ed0          # the commit before engine/loop.py

The other commit's engine/train.py is loaded beside this checkout's engine (as
normlab.engine._other_train, removed again at the end), so both loops share every other module:
the pair measures the loop itself. docs/speed.md quotes its figures.
"""

import argparse
import importlib
import statistics
import subprocess
import time
from pathlib import Path

from normlab.engine import train as this
from normlab.engine.bench import bench_config
from normlab.engine.runs import RunTask

ENGINE = Path(this.__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("commit", help="the other commit (its engine/train.py)")
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--steps", type=int, default=1000)
    args = ap.parse_args()
    source = subprocess.run(["git", "show", f"{args.commit}:engine/train.py"], capture_output=True, text=True,
                            check=True, cwd=ENGINE.parent).stdout  # fmt: skip
    other_path = ENGINE / "_other_train.py"
    other_path.write_text(source)
    try:
        other = importlib.import_module("normlab.engine._other_train")
        for every in (0, 50):
            task = RunTask("ab", "x", 0, bench_config(args.steps, every, "cpu"))
            other.train(task), this.train(task)  # warm up
            ratios = []
            for _ in range(args.pairs):
                t0 = time.perf_counter()
                a = other.train(task)
                t1 = time.perf_counter()
                b = this.train(task)
                t2 = time.perf_counter()
                assert a.rows == b.rows and a.final == b.final, "the two loops gave different numbers"
                ratios.append((t1 - t0) / (t2 - t1))
            median, lo, hi = statistics.median(ratios), min(ratios), max(ratios)
            print(f"probes every {every}: this loop's speed / {args.commit}'s, median of {args.pairs} interleaved "
                  f"pairs {median:.3f} (range {lo:.3f}-{hi:.3f}); rows identical")  # fmt: skip
    finally:
        other_path.unlink()


if __name__ == "__main__":
    main()
