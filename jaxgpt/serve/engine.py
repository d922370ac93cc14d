"""The batching engine: one thread that owns the decoder and runs continuous batching.

Requests become rows (one per prompt × sample). Rows wait in a bounded FIFO; between decode
steps the thread moves waiting rows into free slots (one prefill per group), then runs one
decode step for every busy slot and hands each row's new text to its request. A row leaves its
slot as soon as it ends (end-of-text, a stop string, max_tokens or a cancel), and a waiting row
takes the slot at the next step: requests never wait for a whole batch to finish.

Echo requests (`Job.echo`: score the prompt, lm-eval's loglikelihood tasks) take another path
through the same thread: their rows wait in a queue of their own, and between decode steps the
thread runs one scoring pass (`serve.scorer`: a full forward pass over up to `max_rows`
prompts) and answers those rows at once; they never take a decode slot. Scoring and decoding
share the device by taking turns, so neither starves the other: each turn of the loop runs at
most one scoring pass and one decode step.

A row may generate past the model's context. When its cache is full it slides on its own, by
the rule offline generation slides with (`decode.window.slide`): it keeps its last
`window_size(block_size)` tokens, which the model re-reads from position 0 through the same
prefill new rows go through (between two steps, in its own slot), and decoding goes on.
"""

from __future__ import annotations

import collections
import dataclasses
import heapq
import logging
import threading
import time
from collections.abc import Callable

import numpy as np

from jaxgpt.decode.window import slide
from jaxgpt.serve.decoder import PREFILL_ROWS, Decoder, seed_key_data
from jaxgpt.serve.scorer import Scored, Scorer
from jaxgpt.serve.text import TextStream

log = logging.getLogger("jaxgpt.serve")


class QueueFullError(Exception):
    """The wait queue has no room for the request's rows."""


class ShuttingDownError(Exception):
    """The engine takes no new requests."""


@dataclasses.dataclass
class TokenLogprob:
    """A token, its log-probability and the most likely alternatives (id, logprob). An echoed
    prompt's first token has neither (None): nothing came before it."""

    token: int
    logprob: float | None
    top: list[tuple[int, float]] | None


@dataclasses.dataclass
class Event:
    """New output of one choice; finish_reason is set on its last event."""

    index: int
    text: str
    n_tokens: int
    logprobs: list[TokenLogprob]
    finish_reason: str | None = None
    error: str | None = None


@dataclasses.dataclass
class Job:
    """One request: its prompts (token ids), sampling settings and where its events go.

    Choice i = prompt_index * n + sample_index draws with fold_in(key(seed), i), as
    `python -m jaxgpt.generate` numbers its rows, so the texts match it for the same seed.
    """

    prompts: list[list[int]]
    n: int
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    stop: list[str]
    seed: int
    logprobs: bool
    stream: bool
    emit: Callable[[Event], None]
    echo: bool = False  # score the prompts (max_tokens 0 or 1); their logprobs lead the events
    cancelled: bool = False

    @property
    def n_choices(self) -> int:
        return len(self.prompts) * self.n


@dataclasses.dataclass
class Row:
    """One choice of a job, decoding in a slot or waiting for one."""

    job: Job
    index: int
    prompt: list[int]
    seed_key: np.ndarray  # uint32[2] raw data of key(seed); the row folds in its index
    text: TextStream
    ids: list[int] = dataclasses.field(default_factory=list)  # tokens drawn (the slide reads them)
    fill: int = 0  # cache positions the row's slot holds; at the context, the row slides
    slot: int = -1
    pending: Event | None = None  # output not yet handed over (non-streamed jobs)

    @property
    def generated(self) -> int:
        return len(self.ids)


class Engine:
    """Owns the decoder (and the scorer, if echo is served); `submit` and `cancel` may be
    called from any thread."""

    def __init__(
        self,
        decoder: Decoder,
        tokenizer,
        max_queue: int,
        on_step: Callable[[int, float], None] | None = None,
        step_delay: float = 0.0,
        scorer: Scorer | None = None,
        on_score: Callable[[int, int, float], None] | None = None,
    ):
        self.decoder = decoder
        self.scorer = scorer  # None: echo requests are refused before they get here
        self.tokenizer = tokenizer
        self.eot_id = tokenizer.eot_id
        self.max_queue = max_queue
        self.on_step = on_step  # (busy rows, seconds) after each decode step, for metrics
        self.on_score = on_score  # (rows, tokens, seconds) after each scoring pass
        self.step_delay = step_delay  # pacing for tests and demos; 0 in production
        self._cv = threading.Condition()
        self._waiting: collections.deque[Row] = collections.deque()
        self._scoring: collections.deque[Row] = collections.deque()
        self._busy: dict[int, Row] = {}
        self._free = list(range(decoder.max_batch))
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="jaxgpt-engine", daemon=True)

    @property
    def n_waiting(self) -> int:
        return len(self._waiting)

    @property
    def n_scoring(self) -> int:
        """Echo rows waiting for a scoring pass."""
        return len(self._scoring)

    @property
    def n_busy(self) -> int:
        return len(self._busy)

    @property
    def can_score(self) -> bool:
        return self.scorer is not None

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Finish what was submitted (callers stop submitting first), then end the thread."""
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join(timeout)

    def submit(self, job: Job) -> None:
        """Queue a job's rows; raises QueueFullError or ShuttingDownError instead of waiting.
        Decode and echo rows count against one limit."""
        if job.echo and self.scorer is None:
            raise ValueError("this engine has no scorer: echo jobs cannot run")
        seed_key = seed_key_data(job.seed)
        rows = [
            Row(
                job,
                i,
                job.prompts[i // job.n],
                seed_key,
                TextStream(self.tokenizer.decode, job.stop),
            )
            for i in range(job.n_choices)
        ]
        with self._cv:
            if self._stopping:
                raise ShuttingDownError("the server is shutting down")
            queued = len(self._waiting) + len(self._scoring)
            if queued + len(rows) > self.max_queue:
                raise QueueFullError(
                    f"the queue is full ({queued} choices waiting, limit "
                    f"{self.max_queue}); retry later"
                )
            (self._scoring if job.echo else self._waiting).extend(rows)
            self._cv.notify()

    def cancel(self, job: Job) -> None:
        """Stop decoding a job's rows (the client went away); their slots free at the next step."""
        with self._cv:
            job.cancelled = True
            self._cv.notify()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not (self._waiting or self._busy or self._scoring or self._stopping):
                    self._cv.wait()
                self._drop_cancelled()
                if self._stopping and not (self._waiting or self._busy or self._scoring):
                    return
                admitted = self._admit()
                scoring = self._take_scoring()
            try:
                for i in range(0, len(admitted), PREFILL_ROWS):
                    self._prefill(admitted[i : i + PREFILL_ROWS])
                # After the prefills: a prompt may fill the whole context by itself.
                full = self._full()
                for i in range(0, len(full), PREFILL_ROWS):
                    self._prefill(full[i : i + PREFILL_ROWS])
                if self._busy:
                    self._step()
            except Exception as e:  # a failed step must not hang its requests
                log.exception("decode step failed")
                self._fail_all(f"decoding failed: {type(e).__name__}: {e}")
            if scoring:
                self._score(scoring)
            if self.step_delay:
                time.sleep(self.step_delay)

    def _drop_cancelled(self) -> None:
        self._waiting = collections.deque(r for r in self._waiting if not r.job.cancelled)
        self._scoring = collections.deque(r for r in self._scoring if not r.job.cancelled)
        for row in list(self._busy.values()):
            if row.job.cancelled:
                self._release(row)

    def _full(self) -> list[Row]:
        """Busy rows whose cache is full: they slide before they step again."""
        context = self.decoder.config.block_size
        return [row for row in self._busy.values() if row.fill == context]

    def _admit(self) -> list[Row]:
        """Waiting rows into free slots, lowest slots first so the step stays small."""
        admitted = []
        while self._waiting and self._free:
            row = self._waiting.popleft()
            row.slot = heapq.heappop(self._free)
            self._busy[row.slot] = row
            admitted.append(row)
        return admitted

    def _take_scoring(self) -> list[Row]:
        """The next echo rows for one scoring pass, first come first served."""
        if self.scorer is None:
            return []
        n = min(len(self._scoring), self.scorer.max_rows)
        return [self._scoring.popleft() for _ in range(n)]

    def _release(self, row: Row) -> None:
        with self._cv:  # re-entrant use from _drop_cancelled is fine: Condition wraps an RLock
            del self._busy[row.slot]
            heapq.heappush(self._free, row.slot)

    def _prefill(self, rows: list[Row]) -> None:
        """Start new rows from their prompts, and slide full ones: a full row keeps its window
        of latest tokens (prompt and drawn ones, the one just drawn last), which the model
        re-reads, and draws its next token with the step key it was due (decode.window)."""
        jobs = [r.job for r in rows]
        context = self.decoder.config.block_size
        inputs = [slide(r.prompt + r.ids, context) if r.ids else r.prompt for r in rows]
        out = self.decoder.prefill(
            inputs,
            [r.slot for r in rows],
            np.stack([r.seed_key for r in rows]),
            [r.index for r in rows],
            [j.temperature for j in jobs],
            [j.top_k for j in jobs],
            [j.top_p for j in jobs],
            [r.generated for r in rows],
        )
        for i, row in enumerate(rows):
            row.fill = len(inputs[i])
            self._advance(row, *(x[i] for x in out))

    def _step(self) -> None:
        start = time.perf_counter()
        rows = list(self._busy.values())
        out = self.decoder.step(max(self._busy) + 1)
        for row in rows:
            row.fill += 1  # the step wrote the row's last token into its cache
            self._advance(row, *(x[row.slot] for x in out))
        if self.on_step:
            self.on_step(len(rows), time.perf_counter() - start)

    def _advance(self, row: Row, token, logprob, top_ids, top_logprobs) -> None:
        """Hand one drawn token to its row: release text, end the row when it is done."""
        token = int(token)
        job = row.job
        if job.cancelled:
            return
        if token == self.eot_id:
            self._finish(row, Event(row.index, row.text.finish(), 0, [], "stop"))
            return
        row.ids.append(token)
        piece, stopped = row.text.push(token)
        info = []
        if job.logprobs:
            top = [(int(t), float(lp)) for t, lp in zip(top_ids, top_logprobs, strict=True)]
            info = [TokenLogprob(token, float(logprob), top)]
        if stopped:
            self._finish(row, Event(row.index, piece, 1, info, "stop"))
        elif row.generated >= job.max_tokens:
            self._finish(row, Event(row.index, piece + row.text.finish(), 1, info, "length"))
        else:
            self._emit(row, Event(row.index, piece, 1, info))

    def _score(self, rows: list[Row]) -> None:
        """One scoring pass over echo rows; each row is answered by one event."""
        start = time.perf_counter()
        jobs = [r.job for r in rows]
        try:
            scored = self.scorer.score(
                [r.prompt for r in rows],
                np.stack([r.seed_key for r in rows]),
                [r.index for r in rows],
                [j.temperature for j in jobs],
                [j.top_k for j in jobs],
                [j.top_p for j in jobs],
            )
            events = [self._echo_event(row, s) for row, s in zip(rows, scored, strict=True)]
        except Exception as e:  # the rows' requests get a 500, serving goes on
            log.exception("scoring failed")
            message = f"scoring failed: {type(e).__name__}: {e}"
            for row in rows:
                row.job.emit(Event(row.index, "", 0, [], "error", error=message))
            return
        for row, event in zip(rows, events, strict=True):
            if not row.job.cancelled:
                row.job.emit(event)
        if self.on_score:
            self.on_score(len(rows), sum(len(r.prompt) for r in rows), time.perf_counter() - start)

    def _echo_event(self, row: Row, s: Scored) -> Event:
        """An echo row's one event: its prompt's logprobs (the first token has none), then with
        max_tokens 1 the drawn token, end-of-text included, so that the logprobs always hold
        len(prompt) + max_tokens entries (lm-eval's parser cuts the last one off)."""
        job = row.job
        info = []
        if job.logprobs:
            lps, ids, tops = s.logprobs.tolist(), s.top_ids.tolist(), s.top_logprobs.tolist()
            info = [TokenLogprob(row.prompt[0], None, None)]
            info += [
                TokenLogprob(t, lps[j], list(zip(ids[j], tops[j], strict=True)))
                for j, t in enumerate(row.prompt[1:])
            ]
        if job.max_tokens == 0:
            return Event(row.index, "", 0, info, "length")
        if job.logprobs:
            top = list(zip(ids[-1], tops[-1], strict=True))
            info.append(TokenLogprob(s.token, s.token_logprob, top))
        if s.token == self.eot_id:
            return Event(row.index, "", 1, info, "stop")
        piece, stopped = row.text.push(s.token)
        text = piece if stopped else piece + row.text.finish()
        return Event(row.index, text, 1, info, "stop" if stopped else "length")

    def _emit(self, row: Row, event: Event) -> None:
        """Hand output over; a non-streamed job gets one event per row, when the row ends (each
        hand-over wakes the server's event loop, which then has less time for HTTP)."""
        if row.pending is not None:
            p = row.pending
            event = dataclasses.replace(
                event,
                text=p.text + event.text,
                n_tokens=p.n_tokens + event.n_tokens,
                logprobs=p.logprobs + event.logprobs,
            )
            row.pending = None
        if row.job.stream or event.finish_reason:
            row.job.emit(event)
        else:
            row.pending = event

    def _finish(self, row: Row, event: Event) -> None:
        self._release(row)
        self._emit(row, event)

    def _fail_all(self, message: str) -> None:
        for row in list(self._busy.values()):
            self._finish(row, Event(row.index, "", 0, [], "error", error=message))
