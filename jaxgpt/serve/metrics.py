"""Counters and histograms in the Prometheus text format (no client library needed)."""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Histogram:
    """Cumulative-bucket histogram with sum and count."""

    def __init__(self, buckets: tuple[float, ...]):
        self.bounds = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0

    @property
    def count(self) -> int:
        return sum(self.counts)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def lines(self, name: str) -> list[str]:
        out, total = [], 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            total += count
            out.append(f'{name}_bucket{{le="{bound:g}"}} {total}')
        total += self.counts[-1]
        out += [
            f'{name}_bucket{{le="+Inf"}} {total}',
            f"{name}_sum {self.sum:.6f}",
            f"{name}_count {total}",
        ]
        return out


class Metrics:
    """What /metrics reports; updated from the event loop and the engine thread."""

    def __init__(self, gauges: dict[str, tuple[str, Callable[[], float]]] | None = None):
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.decode_steps = 0
        self.score_passes = 0
        self.scored_tokens = 0
        self.latency = Histogram(LATENCY_BUCKETS)
        self.first_token = Histogram(LATENCY_BUCKETS)
        self.step_rows = Histogram(BATCH_BUCKETS)
        self.score_rows = Histogram(BATCH_BUCKETS)
        # name -> (help, read function): live values such as queue depth, read at scrape time.
        self.gauges = dict(gauges or {})

    def request(self, endpoint: str, code: int) -> None:
        with self._lock:
            key = (endpoint, code)
            self.requests[key] = self.requests.get(key, 0) + 1

    def completion(
        self,
        prompt_tokens: int,
        completion_tokens: int,
        seconds: float,
        first_token_seconds: float | None,
    ) -> None:
        with self._lock:
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
            self.latency.observe(seconds)
            if first_token_seconds is not None:
                self.first_token.observe(first_token_seconds)

    def step(self, rows: int, seconds: float) -> None:
        del seconds  # the latency histograms cover time; rows per step shows batching at work
        with self._lock:
            self.decode_steps += 1
            self.step_rows.observe(rows)

    def score(self, rows: int, tokens: int, seconds: float) -> None:
        """One scoring pass (echo requests) over `rows` prompts of `tokens` tokens in all."""
        del seconds  # as for decode steps, the request latency histogram covers time
        with self._lock:
            self.score_passes += 1
            self.scored_tokens += tokens
            self.score_rows.observe(rows)

    def render(self) -> str:
        """The Prometheus text exposition (format 0.0.4)."""
        p = "jaxgpt_"
        with self._lock:
            out = [
                f"# HELP {p}requests_total HTTP requests by endpoint and status code.",
                f"# TYPE {p}requests_total counter",
            ]
            for (endpoint, code), count in sorted(self.requests.items()):
                out.append(f'{p}requests_total{{endpoint="{endpoint}",code="{code}"}} {count}')
            for name, value, what in (
                ("prompt_tokens_total", self.prompt_tokens, "Prompt tokens of completed requests."),
                ("completion_tokens_total", self.completion_tokens, "Tokens generated."),
                ("decode_steps_total", self.decode_steps, "Batched decode steps run."),
                ("score_passes_total", self.score_passes, "Scoring passes run (echo)."),
                ("scored_tokens_total", self.scored_tokens, "Prompt tokens scored (echo)."),
            ):
                out += [
                    f"# HELP {p}{name} {what}",
                    f"# TYPE {p}{name} counter",
                    f"{p}{name} {value}",
                ]
            for name, hist, what in (
                ("request_duration_seconds", self.latency, "Completion request latency."),
                ("time_to_first_token_seconds", self.first_token, "Time to the first token."),
                ("decode_step_rows", self.step_rows, "Busy rows per decode step."),
                ("score_pass_rows", self.score_rows, "Prompts per scoring pass (echo)."),
            ):
                out += [f"# HELP {p}{name} {what}", f"# TYPE {p}{name} histogram"]
                out += hist.lines(p + name)
        for name, (what, read) in self.gauges.items():
            out += [f"# HELP {p}{name} {what}", f"# TYPE {p}{name} gauge", f"{p}{name} {read():g}"]
        return "\n".join(out) + "\n"
