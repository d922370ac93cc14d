"""The batching engine (jaxgpt/serve/engine.py) against a scripted decoder: no model, no server.

The fake decoder draws token draw(choice, t) for a row's t-th token, as the real one draws with
fold_in(fold_in(key(seed), choice), t); so each row's text is known in advance whatever slot it
runs in and whoever shares its steps.
"""

from __future__ import annotations

import queue
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from jaxgpt.decode.window import slide, window_size
from jaxgpt.serve.engine import Engine, Event, Job, QueueFullError, ShuttingDownError

EOT = 0


def letters(choice: int, t: int) -> int:
    """Tokens 1..5 ('a'..'e'), a different cycle per choice; never end-of-text."""
    return 1 + (3 * choice + t) % 5


class FakeTokenizer:
    eot_id = EOT

    def decode(self, ids) -> str:
        return "".join(chr(ord("a") + t - 1) for t in ids if t != EOT)


def text_of(choice: int, n: int, draw=letters) -> str:
    return FakeTokenizer().decode([draw(choice, t) for t in range(n)])


class FakeDecoder:
    """Slots like the real decoder's; records every prefill and step it is asked for."""

    def __init__(self, max_batch: int = 2, block_size: int = 64, draw=letters, fail_at: int = -1):
        self.max_batch = max_batch
        self.config = SimpleNamespace(block_size=block_size)
        self.draw = draw
        self.fail_at = fail_at  # the step number that raises, to test failures
        self.rows: dict[int, list[int]] = {}  # slot -> [choice, tokens drawn]
        self.prefills: list[dict] = []
        self.steps: list[int] = []
        self.lock = threading.Lock()

    def _out(self, tokens: list[int]) -> tuple[np.ndarray, ...]:
        n = len(tokens)
        top_ids = np.tile(np.arange(5, dtype=np.int32), (n, 1))
        return (np.array(tokens, np.int32), np.full(n, -0.5, np.float32), top_ids,
                np.full((n, 5), -1.0, np.float32))  # fmt: skip

    def prefill(self, prompts, slots, seed_keys, choices, temperature, top_k, top_p, drawn=None):
        drawn = drawn or [0] * len(prompts)
        with self.lock:
            self.prefills.append({"prompts": prompts, "slots": slots, "choices": choices,
                                  "drawn": drawn})  # fmt: skip
        tokens = []
        for slot, choice, t in zip(slots, choices, drawn, strict=True):
            self.rows[slot] = [choice, t + 1]
            tokens.append(self.draw(choice, t))
        return self._out(tokens)

    def step(self, busy_rows: int) -> tuple[np.ndarray, ...]:
        with self.lock:
            self.steps.append(busy_rows)
            if len(self.steps) == self.fail_at:
                raise RuntimeError("device lost")
        tokens = [0] * busy_rows
        for slot in range(busy_rows):
            if slot in self.rows:
                choice, t = self.rows[slot]
                tokens[slot] = self.draw(choice, t)
                self.rows[slot][1] += 1
        return self._out(tokens)


class Collector:
    """A job's emit callback: every event, and a wait for all of its choices to finish."""

    def __init__(self, n_choices: int):
        self.events: queue.Queue[Event] = queue.Queue()
        self.all: list[Event] = []
        self.n_choices = n_choices

    def __call__(self, event: Event) -> None:
        self.events.put(event)

    def wait(self, timeout: float = 10.0) -> list[Event]:
        deadline = time.monotonic() + timeout
        while sum(e.finish_reason is not None for e in self.all) < self.n_choices:
            self.all.append(self.events.get(timeout=max(deadline - time.monotonic(), 0.01)))
        return self.all

    def texts(self) -> dict[int, str]:
        out: dict[int, str] = {}
        for e in self.all:
            out[e.index] = out.get(e.index, "") + e.text
        return out

    def finishes(self) -> dict[int, str]:
        return {e.index: e.finish_reason for e in self.all if e.finish_reason}


def job(emit, prompts=((1, 2),), n=1, max_tokens=4, stop=(), stream=False, **kw) -> Job:
    settings = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "seed": 0, "logprobs": False}
    return Job([list(p) for p in prompts], n, max_tokens, stop=list(stop), stream=stream,
               emit=emit, **{**settings, **kw})  # fmt: skip


@pytest.fixture
def make_engine():
    engines = []

    def make(decoder: FakeDecoder, max_queue: int = 16, start: bool = True, **kw) -> Engine:
        engine = Engine(decoder, FakeTokenizer(), max_queue, **kw)
        if start:
            engine.start()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        if engine._thread.is_alive():
            engine.stop(timeout=10)


def test_rows_take_the_lowest_free_slots_and_waiting_rows_take_freed_ones(make_engine):
    decoder = FakeDecoder(max_batch=2)
    engine = make_engine(decoder, start=False)
    got = Collector(3)
    engine.submit(job(got, n=3, max_tokens=3))  # three choices, two slots
    assert engine.n_waiting == 3
    engine.start()
    got.wait()
    assert got.texts() == {i: text_of(i, 3) for i in range(3)}
    assert got.finishes() == {0: "length", 1: "length", 2: "length"}
    first, *later = decoder.prefills
    assert first["slots"] == [0, 1] and first["choices"] == [0, 1]
    assert [(p["slots"], p["choices"]) for p in later] == [([0], [2])]
    assert max(decoder.steps) == 2  # never more rows than slots
    assert engine.n_busy == 0 and engine.n_waiting == 0


def test_a_full_queue_refuses_rows_instead_of_waiting(make_engine):
    engine = make_engine(FakeDecoder(max_batch=1), max_queue=3, start=False)
    engine.submit(job(lambda e: None, n=2))
    with pytest.raises(QueueFullError, match="2 choices waiting, limit 3"):
        engine.submit(job(lambda e: None, n=2))
    engine.submit(job(lambda e: None, n=1))  # what fits still gets in
    assert engine.n_waiting == 3


def test_stop_strings_end_of_text_and_max_tokens_finish_rows(make_engine):
    engine = make_engine(FakeDecoder(max_batch=4))
    stopped, capped = Collector(1), Collector(1)
    engine.submit(job(stopped, max_tokens=20, stop=["cd"]))  # choice 0 writes "abcdea..."
    engine.submit(job(capped, max_tokens=7))
    assert stopped.wait() == [Event(0, "ab", 4, [], "stop")]  # "cd" drawn, then cut
    assert stopped.texts() == {0: "ab"}
    assert capped.wait()[-1].finish_reason == "length" and capped.texts() == {0: text_of(0, 7)}

    eot_at_5 = lambda choice, t: EOT if t == 5 else letters(choice, t)
    ended = Collector(1)
    make_engine(FakeDecoder(draw=eot_at_5)).submit(job(ended, max_tokens=20, stream=True))
    events = ended.wait()
    assert "".join(e.text for e in events) == text_of(0, 5)
    assert sum(e.n_tokens for e in events) == 5  # end-of-text is not counted
    assert events[-1].finish_reason == "stop"


def test_each_choice_gets_its_own_events(make_engine):
    """Streamed: one event per token, tagged with its choice; not streamed: one per choice."""
    engine = make_engine(FakeDecoder(max_batch=3))
    streamed, whole = Collector(4), Collector(4)
    engine.submit(job(streamed, prompts=[[1], [2, 3]], n=2, max_tokens=5, stream=True,
                      logprobs=True))  # fmt: skip
    engine.submit(job(whole, prompts=[[1], [2, 3]], n=2, max_tokens=5))
    for got in (streamed, whole):
        got.wait()
        assert got.texts() == {i: text_of(i, 5) for i in range(4)}
        assert got.finishes() == dict.fromkeys(range(4), "length")
    for i in range(4):
        mine = [e for e in streamed.all if e.index == i]
        assert [e.n_tokens for e in mine] == [1] * 5
        assert [e.finish_reason for e in mine] == [None] * 4 + ["length"]
        assert [lp.token for e in mine for lp in e.logprobs] == [letters(i, t) for t in range(5)]
        assert mine[0].logprobs[0].logprob == -0.5 and len(mine[0].logprobs[0].top) == 5
    assert sorted(e.index for e in whole.all) == [0, 1, 2, 3]
    assert all(e.n_tokens == 5 and e.logprobs == [] for e in whole.all)


def test_cancel_frees_the_slot_and_sends_nothing_more(make_engine):
    decoder = FakeDecoder(max_batch=1)
    engine = make_engine(decoder, step_delay=0.002)
    endless = Collector(1)
    cancelled = job(endless, max_tokens=10**6, stream=True)
    engine.submit(cancelled)
    endless.events.get(timeout=10)
    engine.cancel(cancelled)
    after = Collector(1)
    engine.submit(job(after, max_tokens=3))  # waits for the only slot
    after.wait()
    assert after.texts() == {0: text_of(0, 3)}
    sent = endless.events.qsize()
    time.sleep(0.05)
    assert endless.events.qsize() == sent <= 2  # at most the step under way when it cancelled
    assert not any(e.finish_reason for e in list(endless.events.queue))
    assert engine.n_busy == 0


def test_a_full_row_slides_to_its_window_and_keeps_its_step_keys(make_engine):
    """Context 8: the 6-token prompt fills it after 2 steps; each slide re-reads the last
    window_size(8) tokens of prompt + drawn ones, with the step key index it was due."""
    decoder = FakeDecoder(max_batch=2, block_size=8)
    engine = make_engine(decoder)
    got = Collector(1)
    prompt = [5, 4, 3, 2, 1, 5]
    engine.submit(job(got, prompts=[prompt], max_tokens=12))
    got.wait()
    drawn = [letters(0, t) for t in range(12)]
    assert got.texts() == {0: text_of(0, 12)}
    W = window_size(8)
    slides = decoder.prefills[1:]
    # Filled at 8 after 3 tokens, then every 8 - W + 1 = 5 tokens: slides before tokens 3, 8.
    assert [p["drawn"] for p in slides] == [[3], [8]]
    for p in slides:
        (t,) = p["drawn"]
        assert p["prompts"] == [slide(prompt + drawn[:t], 8)] and len(p["prompts"][0]) == W


def test_a_failed_step_ends_busy_rows_with_an_error_and_serving_goes_on(make_engine):
    decoder = FakeDecoder(max_batch=2, fail_at=2)
    engine = make_engine(decoder)
    failed = Collector(2)
    engine.submit(job(failed, n=2, max_tokens=50))
    events = failed.wait()
    assert {e.finish_reason for e in events} == {"error"}
    assert all("device lost" in e.error for e in events)
    later = Collector(1)
    engine.submit(job(later, max_tokens=3))
    later.wait()
    assert later.finishes() == {0: "length"}


def test_stop_finishes_what_was_submitted_then_refuses_new_work(make_engine):
    engine = make_engine(FakeDecoder(max_batch=1), step_delay=0.001)
    got = Collector(3)
    engine.submit(job(got, n=3, max_tokens=6))
    engine.stop(timeout=10)
    assert not engine._thread.is_alive()
    assert got.wait(timeout=0.1) and got.texts() == {i: text_of(i, 6) for i in range(3)}
    with pytest.raises(ShuttingDownError):
        engine.submit(job(lambda e: None))
