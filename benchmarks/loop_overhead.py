"""What the training loop costs over the bare step: `python benchmarks/loop_overhead.py`.

Runs, back to back and alternating, (a) `jaxgpt.train` on a config and reads the median
`step_time_s` of its metrics.jsonl (the loop's own meter: input pipeline, host-to-device copies,
progress bar, metric reads and checkpoints all included), and (b) `jaxgpt.bench` on the same
shape, with the same prepared data through the training input pipeline and with synthetic
batches already on the devices. Prints each run and the medians' ratio loop / bench.

--other_tree DIR measures a second source tree (e.g. an older checkout, `git archive REV | tar
-x -C DIR`) in the same interleaved run, for a before/after comparison on a noisy machine.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


# `python -m` would put the working directory first on sys.path; this puts the tree first.
_LAUNCH = (
    "import runpy, sys; tree, module = sys.argv.pop(1), sys.argv.pop(1); "
    "sys.path.insert(0, tree); sys.argv[0] = module; "
    "runpy.run_module(module, run_name='__main__', alter_sys=True)"
)


def _run(args: list[str], tree: Path) -> str:
    """`python -m ARGS` on that tree's code, from this checkout (relative data paths resolve
    as they do for a user here)."""
    proc = subprocess.run(
        [sys.executable, "-c", _LAUNCH, str(tree), *args], cwd=REPO, capture_output=True, text=True
    )
    if proc.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def loop_ms(tree: Path, config: str, steps: int, workdir: Path) -> float:
    """Median step time the training loop recorded (its first window, with compile, dropped)."""
    _run(
        ["jaxgpt.train", "--config", str(tree / config), "--workdir", str(workdir),
         f"--config.train.steps={steps}", "--config.train.eval_every=0",
         "--config.train.sample_tokens=0"],
        tree,
    )  # fmt: skip
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    times = [r["step_time_s"] for r in lines if r.get("step_time_s") is not None][1:]
    return 1000 * statistics.median(times)


def bench_ms(tree: Path, config: str, steps: int, data: Path | None, vocab: int) -> float:
    args = ["jaxgpt.bench", "--config", str(tree / config), "--steps", str(steps), "--warmup", "5"]
    args += ["--data", str(data)] if data else [f"--config.model.vocab_size={vocab}"]
    out = _run(args, tree)
    return float(re.search(r"^step\s+([\d.]+) ms median", out, re.M).group(1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default="configs/shakespeare_char.py")
    p.add_argument("--steps", type=int, default=1000, help="training steps per loop run")
    p.add_argument("--bench_steps", type=int, default=300)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--other_tree", type=Path, help="a second source tree to measure alongside")
    args = p.parse_args()
    trees = {"this": REPO} | ({"other": args.other_tree.resolve()} if args.other_tree else {})
    results: dict[str, dict[str, list[float]]] = {t: {} for t in trees}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for name, tree in trees.items():
                workdir = Path(tmp) / f"{name}-{i}"
                loop = loop_ms(tree, args.config, args.steps, workdir)
                vocab = json.loads((workdir / "config.json").read_text())["model"]["vocab_size"]
                data = bench_ms(tree, args.config, args.bench_steps, workdir / "data", vocab)
                synthetic = bench_ms(tree, args.config, args.bench_steps, None, vocab)
                for key, value in (("loop", loop), ("bench_data", data), ("bench", synthetic)):
                    results[name].setdefault(key, []).append(value)
                print(f"{name} run {i}: loop {loop:.2f} ms, bench --data {data:.2f} ms, "
                      f"bench synthetic {synthetic:.2f} ms", flush=True)  # fmt: skip
    for name, r in results.items():
        m = {k: statistics.median(v) for k, v in r.items()}
        print(
            f"{name}: median loop {m['loop']:.2f} ms, bench --data {m['bench_data']:.2f} ms, "
            f"bench {m['bench']:.2f} ms; loop / bench {m['loop'] / m['bench']:.3f}, "
            f"loop / bench --data {m['loop'] / m['bench_data']:.3f}"
        )


if __name__ == "__main__":
    main()
