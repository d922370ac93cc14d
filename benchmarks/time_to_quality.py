"""Time to quality: training seconds until char-level Shakespeare reaches validation loss 1.88,
jaxgpt configs against the well-known PyTorch baseline, measured in one run on this machine.

The baseline is nanoGPT's "baby GPT on CPU" (benchmarks/torch_baseline.py, CharRun): 4 layers,
4 heads, width 128, block 64, batch 12, AdamW lr 1e-3 → 1e-4 cosine, warmup 100, β2 0.99,
2000 iterations, eager PyTorch at its fastest thread count; its README reports val ≈ 1.88 after
those 2000 iterations. The bar: a jaxgpt config reaches val ≤ 1.88 in at most half the
baseline's training seconds for its 2000 iterations. Each jaxgpt contender is built as
`python -m jaxgpt.train --config CONFIG` builds it (data dir, model, optimizer, mesh, CPU
device split, batches) and stepped as its loop steps it (the next step dispatched before the
last loss is read).

What is counted: training only, evaluation excluded, as issue 18 says. For jaxgpt that
includes building the trainer, initializing the parameters and compiling the train step (the
first round pays for it; the report also gives the compile seconds apart); for PyTorch,
building the model and optimizer. Data preparation and drawing each round's batches (done
before the round's clock starts) are not counted for either side.

Everybody trains on jaxgpt's prepared char-level split (the last 10% of tinyshakespeare held
out, as nanoGPT's prepare.py; the baseline sees the same tokens remapped to the 66 ids used)
and is evaluated on the same fixed validation windows (--eval_tokens, by default 100 × 12 × 64
tokens evenly spread over the 111,540 validation tokens: nanoGPT's own estimate is 20 random
batches, whose noise could decide a 1.88 crossing). The contenders take turns of --chunk steps,
each turn to the one furthest behind in its own run (each evaluates every --eval_every /
--torch_eval_every steps), so a short run is spread over the baseline's whole run and both see
the same machine load; --seeds races several seeds of each jaxgpt config against the one
baseline run, and the table gives medians.

    python benchmarks/time_to_quality.py                      # baseline vs the fast recipe
    python benchmarks/time_to_quality.py --seeds 0,1,2        # medians of three fast runs
    python benchmarks/time_to_quality.py --ablation --no_torch --stop_at_target
    python benchmarks/time_to_quality.py --run 'lr3e-3=configs/shakespeare_char_fast.py,opt.lr=3e-3'
"""

from __future__ import annotations

import abc
import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))

from jaxgpt import config as config_lib  # noqa: E402
from jaxgpt import host_memory  # noqa: E402
from jaxgpt.config.command_line import apply_override  # noqa: E402
from jaxgpt.data.build import prepare_dataset  # noqa: E402
from jaxgpt.data.dataset import dataset_key  # noqa: E402
from jaxgpt.data.pipeline import TrainBatches, eval_windows  # noqa: E402
from jaxgpt.run.evaluation import batch_windows, mean_loss  # noqa: E402
from jaxgpt.run.setup import build_trainer, eval_batch_size, start_runtime  # noqa: E402

FAST = "configs/shakespeare_char_fast.py"
BASE = "configs/shakespeare_char.py"
BASELINE = "pytorch baseline (nanoGPT)"
SEQ = 64  # every contender is evaluated at the baseline's context
# Slower variants keep the fast schedule (decay over 500 steps) and go on at min_lr until they
# reach the target, so each gets a steps-to-target figure.
LONGER = "train.steps=1600,opt.decay_steps=500"
GPT2_BLOCK = "model.position=learned,model.norm=layernorm,model.mlp=gelu,model.bias=true"
# The fast recipe with one change taken back at a time: what each change bought.
ABLATION = {
    "fast": FAST,
    "fast, AdamW instead of Muon": f"{FAST},opt.name=adamw,{LONGER}",
    "fast, GPT-2 block": f"{FAST},{GPT2_BLOCK},{LONGER}",
    "fast, learned positions": f"{FAST},model.position=learned,{LONGER}",
    "fast, GELU MLP": f"{FAST},model.mlp=gelu,{LONGER}",
    "fast, batch 24 (half the steps)": (
        f"{FAST},train.batch_size=24,train.steps=800,opt.decay_steps=250,opt.warmup_steps=20"
    ),
    "jaxgpt, classic recipe": BASE,
}


@dataclasses.dataclass
class Curve:
    """What a contender did: (step, training seconds, val loss) at every evaluation."""

    label: str
    seed: int = 0
    points: list[tuple[int, float, float]] = dataclasses.field(default_factory=list)
    step_ms: list[float] = dataclasses.field(default_factory=list)
    startup_s: float = 0.0  # building (and for jaxgpt initializing) before the first step
    first_step_s: float = 0.0  # the first step alone: jaxgpt's includes compiling it
    shared_steps: int = 0  # its first steps, taken while other contenders still took turns

    def reached(self, target: float) -> tuple[int, float] | None:
        """(steps, seconds) at the first evaluation at or below target, or None."""
        return next(((s, t) for s, t, loss in self.points if loss <= target), None)

    @property
    def compile_s(self) -> float:
        """The first step's excess over a median step: the compile (≈0 for eager PyTorch)."""
        return max(0.0, self.first_step_s - statistics.median(self.step_ms[1:] or [0.0]) / 1e3)


class Contender(abc.ABC):
    """Steps in turns, keeps its own training clock and curve."""

    curve: Curve
    steps: int
    eval_every: int
    step = 0
    seconds = 0.0

    @abc.abstractmethod
    def train(self, n: int) -> float:
        """Take n steps; their training seconds."""

    @abc.abstractmethod
    def val_loss(self) -> float:
        """Mean loss on the shared validation windows (not timed)."""

    def timed_steps(self, run_step, batches) -> float:
        """Run run_step on each batch; its seconds, each step's time noted in the curve."""
        t0 = time.perf_counter()
        for batch in batches:
            s0 = time.perf_counter()
            run_step(batch)
            if self.step == 0 and not self.curve.step_ms:
                self.curve.first_step_s = time.perf_counter() - s0
            self.curve.step_ms.append(1e3 * (time.perf_counter() - s0))
        return time.perf_counter() - t0


class TorchContender(Contender):
    """The PyTorch baseline on the run's tokens, remapped to the characters they use."""

    def __init__(self, train_tokens, val_NT1, steps: int, seed: int, threads: int | None,
                 eval_every: int):  # fmt: skip
        from torch_baseline import CharRun, char_vocab

        lut, vocab = char_vocab(train_tokens, val_NT1)
        t0 = time.perf_counter()
        self.run = CharRun(lut[train_tokens], vocab, steps, seed, threads)
        self.curve = Curve(BASELINE, seed, startup_s=time.perf_counter() - t0)
        self.val = lut[val_NT1]
        self.steps, self.eval_every = steps, eval_every

    def train(self, n: int) -> float:
        batches = self.run.batches(n)  # drawn before the clock starts
        seconds = self.timed_steps(lambda xy: self.run.step(*xy), batches)
        self.step += n
        return seconds

    def val_loss(self) -> float:
        return self.run.val_loss(self.val)


def fastest_threads(vocab_size: int, rounds: int = 3, steps: int = 10) -> int:
    """The torch thread count (1 … cores) with the fastest median step, timed in alternating
    rounds on a scratch model: torch's default (all cores) spins its threads and slows 10×
    or more when other processes load the cores, and the baseline deserves its best setting."""
    import torch
    from torch_baseline import CharRun

    from jaxgpt.cpu_devices import usable_cores

    candidates = range(1, usable_cores() + 1)
    times: dict[int, list[float]] = {n: [] for n in candidates}
    tokens = np.random.default_rng(0).integers(0, vocab_size, 10_000)
    runs = {n: CharRun(tokens, vocab_size) for n in candidates}
    for _ in range(rounds):
        for n, run in runs.items():
            torch.set_num_threads(n)
            batches = run.batches(steps)
            t0 = time.perf_counter()
            for x, y in batches:
                run.step(x, y)
            times[n].append((time.perf_counter() - t0) / steps)
    best = min(candidates, key=lambda n: statistics.median(times[n]))
    ms = {n: round(1e3 * statistics.median(t), 1) for n, t in times.items()}
    print(f"torch threads: {best} (median ms/step by thread count: {ms})")
    return best


class JaxContender(Contender):
    """A jaxgpt config, built as jaxgpt.train builds it, stepped as its loop steps it."""

    def __init__(self, label: str, config, data_dir: Path, seed: int, eval_every: int, val_NT1):
        apply_override(config, "train.seed", str(seed))
        rc = config_lib.run_config(config)
        self.data = prepare_dataset(rc.data, data_dir, verbose=False)  # not timed: data prep
        model_cfg = config_lib.model_config(rc.model, self.data.vocab_size)
        if model_cfg.block_size < SEQ:
            raise ValueError(f"{label}: block_size {model_cfg.block_size} < {SEQ}: not the task")
        self.steps, self.eval_every = rc.train.steps, eval_every
        self.batches = TrainBatches(
            self.data.tokens("train"), rc.train.batch_size, model_cfg.block_size, seed
        )
        # The shared windows, in this config's eval batch (padding rows count nothing).
        self.val = batch_windows(val_NT1[:, : SEQ + 1], eval_batch_size(rc.train))
        t0 = time.perf_counter()  # counted: building the trainer and initializing the state
        self.trainer = build_trainer(rc, model_cfg, self.steps, eval_batch_size(rc.train))
        self.state = self.trainer.init(jax.random.fold_in(jax.random.key(seed), 0))
        jax.block_until_ready(self.state)
        self.curve = Curve(label, seed, startup_s=time.perf_counter() - t0)
        self.rng = jax.random.fold_in(jax.random.key(seed), 1)
        self._last = None

    def _step(self, batch) -> None:
        self.state, metrics = self.trainer.step(self.state, batch, self.rng)
        if self._last is not None:
            float(self._last["loss"])  # read one step late, as the training loop does
        self._last = metrics

    def train(self, n: int) -> float:
        sharding = self.trainer.batch_sharding
        local = [self.batches.local_batch(self.step + i) for i in range(n)]
        batches = jax.block_until_ready([jax.device_put(b, sharding) for b in local])

        def run(batch):
            self._step(batch)
            if self.step == 0 and not self.curve.step_ms:
                float(self._last["loss"])  # wait for step 1 so first_step_s is its compile

        seconds = self.timed_steps(run, batches)
        t0 = time.perf_counter()
        # The turn ends when its last step has, on every device: two contenders' programs
        # in flight at once can deadlock XLA:CPU's collectives on a loaded host (seen: an
        # all-gather rendezvous timed out after 40 s and aborted the process).
        jax.block_until_ready((self.state, self._last))
        self._last = None
        self.step += n
        return seconds + time.perf_counter() - t0

    def val_loss(self) -> float:
        loss = mean_loss(self.trainer, self.state.params, self.val)
        jax.block_until_ready(jax.live_arrays())  # every device done before the next turn
        return loss


def race(contenders: list[Contender], target: float, stop_at_target: bool, chunk: int) -> None:
    """Turns of up to `chunk` steps, each to the contender with the smallest share of its steps
    done, until every one has run its steps (a jaxgpt contender stops at the target when
    stop_at_target); evaluations are not timed. Sharing by progress spreads a 250-step run
    over the whole of a 2000-step one, so both see the same load while the machine's other
    users come and go (round robin let the short run finish under one load and the long one
    run on alone under another)."""
    for c in contenders:
        c.seconds = c.curve.startup_s
        c.curve.points.append((0, c.seconds, c.val_loss()))
    active = list(contenders)
    while active:
        c = min(active, key=lambda c: c.step / c.steps)  # the first in order on ties
        c.seconds += c.train(min(chunk, c.steps - c.step, c.eval_every - c.step % c.eval_every))
        if len(active) > 1:
            c.curve.shared_steps = c.step
        if c.step % c.eval_every and c.step < c.steps:
            continue
        loss = c.val_loss()
        c.curve.points.append((c.step, c.seconds, loss))
        name = f"{c.curve.label} (seed {c.curve.seed})"
        print(f"  {name:<44} step {c.step:5d}  {c.seconds:7.1f} s  val {loss:.4f}")
        hit = stop_at_target and isinstance(c, JaxContender) and loss <= target
        if c.step >= c.steps or hit:
            active.remove(c)


def contender_specs(args: argparse.Namespace) -> dict[str, str]:
    """Label → spec of the jaxgpt contenders: the fast recipe (or the ablation set) unless
    --run names others."""
    specs = dict(ABLATION) if args.ablation else {} if args.run else {"fast": FAST}
    for item in args.run:
        label, _, spec = item.partition("=")
        specs[label] = spec
    return specs


def build_config(spec: str):
    """CONFIG[,key=value...]: a config file or preset with --config.key=value overrides."""
    source, *overrides = spec.split(",")
    config = config_lib.load_config_file(source)
    for item in overrides:
        key, _, text = item.partition("=")
        apply_override(config, key.strip(), text.strip())
    return config


def shared_data(args: argparse.Namespace):
    """(data dir, train tokens, fixed validation windows [N, SEQ+1]) of the standard split."""
    config = build_config(BASE)
    rc = config_lib.run_config(config)
    data_dir = Path(args.data_root) / dataset_key(rc.data)
    data = prepare_dataset(rc.data, data_dir, verbose=False)
    stream = data.tokens("train")
    val = eval_windows(data.tokens("val"), SEQ, args.eval_tokens, 12).reshape(-1, SEQ + 1)
    return data_dir, np.asarray(stream.window(0, len(stream))), val


def one_race(args: argparse.Namespace) -> list[Curve]:
    """Build every contender (each jaxgpt config once per seed) and race them; their curves."""
    data_dir, train_tokens, val = shared_data(args)
    contenders: list[Contender] = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for label, spec in contender_specs(args).items():
            config = build_config(spec)
            key = dataset_key(config_lib.run_config(config).data)
            if key != data_dir.name:
                raise ValueError(f"{label}: its data settings differ from {BASE}'s split")
            contenders.append(JaxContender(label, config, data_dir, seed, args.eval_every, val))
    if not args.no_torch:
        threads = args.threads or fastest_threads(len(np.unique(train_tokens)))
        torch_c = TorchContender(
            train_tokens, val, args.torch_steps, 0, threads, args.torch_eval_every
        )
        contenders.insert(0, torch_c)
    print(f"validation: {len(val)} fixed windows of {SEQ} tokens; load {_load()}")
    race(contenders, args.target, args.stop_at_target, args.chunk)
    return [c.curve for c in contenders]


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg()) + " (1/5/15 min)"


def summarize(curves: list[Curve], target: float) -> dict:
    """Per label: steps and seconds to the target, final val, ms/step, compile (medians over
    seeds); ratio = seconds to target / the baseline's seconds for all its steps."""
    labels = list(dict.fromkeys(c.label for c in curves))
    out = {}
    for label in labels:
        group = [c for c in curves if c.label == label]
        hits = [c.reached(target) for c in group]
        reached = [h for h in hits if h is not None]
        out[label] = {
            "seeds": [c.seed for c in group],
            "steps_to_target": [h[0] if h else None for h in hits],
            "seconds_to_target": [round(h[1], 2) if h else None for h in hits],
            "median_steps_to_target": _median([h[0] for h in reached], len(hits)),
            "median_seconds_to_target": _median([h[1] for h in reached], len(hits)),
            "seconds_all_steps": [round(c.points[-1][1], 2) for c in group],
            "steps_all": [c.points[-1][0] for c in group],
            "final_val": [round(c.points[-1][2], 4) for c in group],
            "median_ms_per_step": round(statistics.median(s for c in group for s in c.step_ms), 2),
            "compile_s": [round(c.compile_s, 2) for c in group],
            "startup_s": [round(c.startup_s, 2) for c in group],
        }
    if BASELINE in out:
        base_curve = next(c for c in curves if c.label == BASELINE)
        _add_ratios(out, base_curve)
    return out


def _add_ratios(out: dict, base_curve: Curve) -> None:
    """ratio: seconds to the target / the baseline's seconds for all its steps (the bar);
    ratio_steps_only: both without building, initializing and compiling; ratio_load_matched:
    against the baseline's steps at the mean step time of those it took while jaxgpt
    contenders still took turns (the machine's load then, when the load drifts later)."""
    base = out[BASELINE]
    base_s = statistics.median(base["seconds_all_steps"])
    base_steps_s = base_s - base_curve.startup_s
    shared = base_curve.step_ms[: base_curve.shared_steps]
    matched_s = None
    if len(shared) >= 50:  # fewer: too short a sample of the baseline's step time
        matched_s = base_curve.startup_s + len(base_curve.step_ms) * statistics.fmean(shared) / 1e3
    base["seconds_load_matched"] = matched_s and round(matched_s, 2)
    for label, r in out.items():
        # The baseline's bar is all its steps, whether or not it crossed the target.
        s = base_s if label == BASELINE else r["median_seconds_to_target"]
        r["ratio"] = None if s is None else round(s / base_s, 3)
        fixed = statistics.median(r["compile_s"]) + statistics.median(r["startup_s"])
        r["ratio_steps_only"] = None if s is None else round((s - fixed) / base_steps_s, 3)
        if label != BASELINE:
            ok = s is not None and matched_s
            r["ratio_load_matched"] = round(s / matched_s, 3) if ok else None


def _median(values: list[float], n: int) -> float | None:
    """The median when every seed reached the target, else None."""
    return round(statistics.median(values), 2) if len(values) == n and values else None


def report(summary: dict, target: float) -> str:
    """A table, and the verdict against half the baseline's training time."""
    head = (
        f"{'recipe':<32} {'steps→' + str(target):>11} {'s→' + str(target):>8} {'final val':>9} "
        f"{'ratio':>6} {'ms/step':>8} {'compile s':>9} {'all steps s':>11}"
    )
    lines = [head]
    for label, r in summary.items():
        steps = "/".join(str(s) for s in r["steps_all"])
        lines.append(
            f"{label:<32} {_fmt(r['median_steps_to_target']):>11} "
            f"{_fmt(r['median_seconds_to_target']):>8} "
            f"{statistics.median(r['final_val']):>9.4f} {_fmt(r.get('ratio')):>6} "
            f"{r['median_ms_per_step']:>8.1f} {statistics.median(r['compile_s']):>9.1f} "
            f"{statistics.median(r['seconds_all_steps']):>7.1f} ({steps})"
        )
    base, fast = summary.get(BASELINE), summary.get("fast")
    if base and fast and fast["ratio"] is not None:
        verdict = "met" if fast["ratio"] <= 0.5 else "NOT met"
        lines.append(
            f"fast to {target} / the baseline's {base['steps_all'][0]} steps = {fast['ratio']:.2f} "
            f"counting build, init and compile ({fast['ratio_steps_only']:.2f} steps only, "
            f"{_fmt(fast['ratio_load_matched'])} load-matched): target ≤ 0.50 "
            f"{verdict}"
        )
    return "\n".join(lines)


def _fmt(x) -> str:
    return "—" if x is None else f"{x:g}"


def plot(curves: list[Curve], target: float, path: Path) -> None:
    """Validation loss against training seconds and against steps (one seed per label)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    colors = iter(plt.get_cmap("tab20").colors[::2] + plt.get_cmap("tab20").colors[1::2])
    for curve in {c.label: c for c in reversed(curves)}.values():
        steps, secs, loss = zip(*curve.points, strict=True)
        style = {"color": "black" if curve.label == BASELINE else next(colors)}
        axes[0].plot(secs, loss, linewidth=1.2, label=curve.label, **style)
        axes[1].plot(steps[1:], loss[1:], linewidth=1.2, **style)  # log x: no step 0
    for ax, xlabel in zip(axes, ("training seconds (evaluation excluded)", "steps"), strict=True):
        ax.axhline(target, color="gray", linestyle="--", linewidth=1)
        ax.set(xlabel=xlabel, ylim=(1.75, 3.0))
        ax.grid(alpha=0.3)
    axes[1].set_xscale("log")
    axes[0].set_ylabel("validation loss (fixed windows of 64)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--target", type=float, default=1.88)
    p.add_argument("--eval_every", type=int, default=10, help="jaxgpt steps between evals")
    p.add_argument("--torch_eval_every", type=int, default=100, help="the baseline's")
    p.add_argument("--chunk", type=int, default=10, help="steps per turn (both sides)")
    p.add_argument("--eval_tokens", type=int, default=100 * 12 * 64, help="validation tokens")
    p.add_argument("--torch_steps", type=int, default=2000)
    p.add_argument("--seeds", default="0", help="comma list: jaxgpt runs per config, medians")
    p.add_argument("--ablation", action="store_true", help="also race the ablation configs")
    p.add_argument("--run", action="append", default=[], help="LABEL=CONFIG[,key=value...]")
    p.add_argument("--no_torch", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = fastest, measured)")
    p.add_argument("--stop_at_target", action="store_true", help="jaxgpt stops at the target")
    p.add_argument("--data_root", default="runs/time_to_quality/data")
    p.add_argument("--out", default="runs/time_to_quality/result.json")
    p.add_argument("--plot", default="", help="write the curves to this PNG")
    p.add_argument("--from_json", default="", help="report (and plot) a saved --out instead")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        curves = [Curve(**c) for c in saved["curves"]]
        print(report(summarize(curves, args.target), args.target))
        if args.plot:
            plot(curves, args.target, Path(args.plot))
        return
    host_memory.keep_freed_memory()  # as jaxgpt.train does; applies to both sides
    configs = [config_lib.run_config(build_config(s)) for s in contender_specs(args).values()]
    sizes = tuple(
        b for rc in configs for b in (rc.train.micro_batch_size, eval_batch_size(rc.train))
    )
    note = start_runtime(configs[0], sizes)
    print(f"{note}; jax {jax.__version__}; load {_load()}")
    curves = one_race(args)
    print(f"load at the end {_load()}")
    summary = summarize(curves, args.target)
    print(report(summary, args.target))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"summary": summary, "curves": [dataclasses.asdict(c) for c in curves]}
    out.write_text(json.dumps({**record, "args": vars(args), "load_end": os.getloadavg()}))
    if args.plot:
        plot(curves, args.target, Path(args.plot))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
