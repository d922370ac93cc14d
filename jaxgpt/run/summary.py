"""What a training run did: printed at the end and written to WORKDIR/summary.json."""

from __future__ import annotations

import dataclasses
import json

from jaxgpt.config import AnyPath


@dataclasses.dataclass
class Summary:
    """A run's outcome; the fields of summary.json."""

    workdir: str
    steps: int
    start_step: int
    tokens: int
    seconds: float
    params: int
    final_loss: float | None
    eval_loss: float | None
    eval_ppl: float | None
    median_step_ms: float | None
    input_wait_frac: float
    checkpoint: str
    preempted: bool = False
    best_step: int | None = None
    best_eval_loss: float | None = None
    stopped_early: bool = False

    def write(self, workdir: AnyPath) -> None:
        (workdir / "summary.json").write_text(json.dumps(dataclasses.asdict(self), indent=2))


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def format_summary(s: Summary, plot: AnyPath | None) -> str:
    """The closing block the train command prints."""
    best = []
    if s.best_step is not None:
        best.append(f"best         val loss {s.best_eval_loss:.4f} at step {s.best_step}")
        if s.stopped_early:
            best.append("             (stopped early: no improvement)")
    rate = s.tokens / max(s.seconds, 1e-9)
    lines = [
        "",
        "── summary " + "─" * 50,
        f"steps        {s.start_step} → {s.steps}" + ("  (stopped by SIGTERM)" * s.preempted),
        f"tokens       {s.tokens:,} in {s.seconds:.1f}s ({rate:,.0f}/s)",
        f"step time    {_fmt(s.median_step_ms, '.1f')} ms median; "
        f"{100 * s.input_wait_frac:.1f}% of the time waiting for input",
        f"train loss   {_fmt(s.final_loss, '.4f')}",
        f"val loss     {_fmt(s.eval_loss, '.4f')}  (perplexity {_fmt(s.eval_ppl, '.2f')})",
        *best,
        f"checkpoint   {s.checkpoint}",
        f"metrics      {s.workdir.rstrip('/')}/metrics.jsonl" + (f", plot {plot}" if plot else ""),
    ]
    return "\n".join(lines)
