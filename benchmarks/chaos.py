"""Kill training at random moments, rerun until it finishes, and compare with a clean run.

`python benchmarks/chaos.py --injections 100` trains a tiny char-level model with
`python -m jaxgpt.train` once without interruption, then again in fresh workdirs, each run
killed with SIGKILL or SIGTERM at a random moment (data preparation, compilation, training,
checkpointing: wherever it lands) and rerun with the same command until it exits 0. Each
finished workdir must log every step exactly once in metrics.jsonl, with losses equal to the
uninterrupted run's bit for bit, and end with the same final checkpoint step. Prints each trial
and a summary; the last line is JSON. tests/test_chaos.py runs a short version in the suite.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STEPS = 40


def train_command(corpus: Path, workdir: Path, steps: int = STEPS) -> list[str]:
    """The same command every time, as a user reruns it."""
    return [
        sys.executable, "-m", "jaxgpt.train", "--config", "tiny", "--workdir", str(workdir),
        f"--config.data.sources=text:{corpus}", "--config.data.tokenizer.model_type=char",
        "--config.data.tokenizer.vocab_size=0", "--config.model.n_layer=1",
        "--config.model.n_embd=32", "--config.model.n_head=2", "--config.model.block_size=32",
        f"--config.train.steps={steps}", "--config.train.batch_size=8",
        "--config.train.log_every=1", "--config.train.eval_every=10",
        "--config.train.eval_tokens=1024", "--config.train.sample_tokens=0",
        "--config.opt.warmup_steps=5", "--config.ckpt.every=5", "--config.ckpt.keep=2",
    ]  # fmt: skip


def _env() -> dict[str, str]:
    # One CPU device: the per-process start-up is what the kills should land in, not XLA's.
    return {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}


def run_to_end(command: list[str], log: Path, timeout: float = 600) -> int:
    with log.open("a") as out:
        return subprocess.run(command, cwd=REPO, env=_env(), stdout=out, stderr=out,
                              timeout=timeout).returncode  # fmt: skip


def train_lines(workdir: Path) -> list[dict]:
    """metrics.jsonl's training lines (those with a loss), in file order."""
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [r for r in (json.loads(x) for x in lines if x.strip()) if "loss" in r]


@dataclasses.dataclass
class Trial:
    kills: list[tuple[str, float]]  # (signal, seconds after start) of each injection
    seconds: float
    problems: list[str]


def chaos_trial(command: list[str], workdir: Path, reference: list[dict], rng: random.Random,
                injections: int, window: tuple[float, float]) -> Trial:  # fmt: skip
    """Kill `injections` runs of the command at random moments, then let one finish; compare."""
    log, kills, t0 = workdir.parent / f"{workdir.name}.log", [], time.perf_counter()
    problems: list[str] = []
    while len(kills) < injections:
        proc = subprocess.Popen(command, cwd=REPO, env=_env(), stdout=log.open("a"),
                                stderr=subprocess.STDOUT)  # fmt: skip
        delay = rng.uniform(*window)
        sig = rng.choice([signal.SIGKILL, signal.SIGTERM])
        try:
            proc.wait(timeout=delay)  # finished before the kill: that is a finished run
        except subprocess.TimeoutExpired:
            proc.send_signal(sig)
            proc.wait(timeout=300)
            kills.append((sig.name, round(delay, 2)))
            continue
        if proc.returncode:
            problems.append(f"a run exited {proc.returncode} on its own (see {log})")
        break
    rc = run_to_end(command, log)
    if rc:
        problems.append(f"the final rerun exited {rc} (see {log})")
    else:
        problems += compare(train_lines(workdir), reference)
        if not (workdir / "checkpoints" / str(reference[-1]["step"])).is_dir():
            problems.append("no checkpoint of the last step")
    return Trial(kills, round(time.perf_counter() - t0, 1), problems)


def compare(got: list[dict], reference: list[dict]) -> list[str]:
    """Each step once, in order, with the reference's loss bit for bit."""
    steps = [r["step"] for r in got]
    problems = []
    if steps != [r["step"] for r in reference]:
        doubled = sorted({s for s in steps if steps.count(s) > 1})
        missing = sorted({r["step"] for r in reference} - set(steps))
        problems.append(f"steps logged: doubled {doubled}, missing {missing}")
    want = {r["step"]: r["loss"] for r in reference}
    differ = [r["step"] for r in got if want.get(r["step"]) != r["loss"]]
    if differ:
        problems.append(f"losses differ from the uninterrupted run at steps {differ[:10]}")
    return problems


def make_corpus(path: Path) -> Path:
    words = "the quick brown fox jumps over a lazy dog while seven wizards hex kings".split()
    lines = [" ".join(words[(i * 7 + j) % len(words)] for j in range(8)) for i in range(1500)]
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--injections", type=int, default=100, help="kills in all")
    p.add_argument("--per_trial", type=int, default=5, help="kills per workdir before it ends")
    p.add_argument("--window", type=float, nargs=2,
                   help="a kill lands this many seconds after a start (uniform); default: "
                   "5%% to 80%% of the uninterrupted run's wall time")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = make_corpus(Path(tmp) / "corpus.txt")
        t0 = time.perf_counter()
        clean = Path(tmp) / "clean"
        if run_to_end(train_command(corpus, clean), Path(tmp) / "clean.log"):
            raise SystemExit((Path(tmp) / "clean.log").read_text()[-3000:])
        reference = train_lines(clean)
        seconds = time.perf_counter() - t0
        window = tuple(args.window or (0.05 * seconds, 0.8 * seconds))
        print(f"uninterrupted run: {len(reference)} steps in {seconds:.1f} s; kills land "
              f"{window[0]:.1f}-{window[1]:.1f} s after a start")  # fmt: skip
        trials: list[Trial] = []
        while sum(len(t.kills) for t in trials) < args.injections:
            workdir = Path(tmp) / f"trial-{len(trials)}"
            left = args.injections - sum(len(t.kills) for t in trials)
            trial = chaos_trial(train_command(corpus, workdir), workdir, reference, rng,
                                min(args.per_trial, left), window)  # fmt: skip
            trials.append(trial)
            status = "ok" if not trial.problems else "; ".join(trial.problems)
            print(f"trial {len(trials)}: {len(trial.kills)} kills {trial.kills} "
                  f"in {trial.seconds} s: {status}", flush=True)  # fmt: skip
    failed = [t for t in trials if t.problems]
    kills = [k for t in trials for k in t.kills]
    print(f"\n{len(kills)} injections over {len(trials)} workdirs "
          f"({sum(k[0] == 'SIGKILL' for k in kills)} SIGKILL, "
          f"{sum(k[0] == 'SIGTERM' for k in kills)} SIGTERM): "
          f"{len(trials) - len(failed)} of {len(trials)} finished with every step logged once "
          "and losses equal to the uninterrupted run")  # fmt: skip
    print(json.dumps({"injections": len(kills), "trials": len(trials), "failed": len(failed),
                      "problems": [t.problems for t in failed]}))  # fmt: skip
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
