"""lm-evaluation-harness through the server: echo (scoring) checked against the model's full
forward pass, next to decoding in one engine; the tokenizer endpoints; and lm-eval's own
`local-completions` model running three local tasks (multiple choice, perplexity, generation)
against a real `python -m jaxgpt.serve`, offline, its per-request loglikelihoods compared with
a direct forward pass."""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fastapi.testclient import TestClient

from jaxgpt.data.tokenizer import train_tokenizer
from jaxgpt.model import GPT, GPTConfig
from jaxgpt.serve.app import Backend, Settings, create_app
from jaxgpt.serve.decoder import Decoder
from jaxgpt.serve.engine import Engine, Event, Job
from jaxgpt.serve.loading import ServedModel
from jaxgpt.serve.scorer import Scored, Scorer, chunk_size

REPO = Path(__file__).resolve().parent.parent
CONTEXT = 32
TEXT = "".join(f"the cat sat on the mat {i % 7}. a dog ran to the hat.\n" for i in range(400))


@functools.cache
def char_tokenizer():
    return train_tokenizer([TEXT], 0, "char", 10**6)


VOCAB = char_tokenizer().vocab_size  # 281 pieces: the model's 320 rows include padding


def make_backend(metrics, score_rows: int = 4) -> Backend:
    """A random float32 GPT whose embedding table has rows past the tokenizer's (VOCAB char
    pieces, 320 rows), behind a real decoder, scorer and engine."""
    tokenizer = char_tokenizer()
    config = GPTConfig(vocab_size=320, block_size=CONTEXT, n_layer=2, n_head=2, n_embd=32)
    model = GPT(config)
    params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    served = ServedModel("tiny", model, params, tokenizer)
    vocab = tokenizer.vocab_size
    decoder = Decoder(model, params, vocab, max_batch=4)
    scorer = Scorer(decoder.model, decoder.params, vocab, score_rows, decoder.prompt_sizes)
    engine = Engine(decoder, tokenizer, 64, metrics.step, scorer=scorer, on_score=metrics.score)
    engine.start()
    return Backend(served, engine)


@pytest.fixture(scope="module")
def app():
    """(client, backend) of a ready in-process app."""
    built = []

    def load(metrics) -> Backend:
        built.append(make_backend(metrics))
        return built[0]

    with TestClient(create_app(Settings(), load)) as client:
        deadline = time.monotonic() + 60
        while client.get("/health").status_code != 200:
            assert time.monotonic() < deadline, "the app never became ready"
            time.sleep(0.05)
        yield client, built[0]


@functools.partial(jax.jit, static_argnames="model")
def _forward_logp(params, tokens_BT, *, model):
    return jax.nn.log_softmax(model.apply({"params": params}, tokens_BT), axis=-1)


def forward_logp(model: GPT, params, ids: list[int]) -> np.ndarray:
    """log_softmax of GPT.apply over the whole (padded) vocabulary: [len(ids), V]. The ids run
    padded to the context (one compile; a causal model's positions never see later ones)."""
    tokens = np.zeros((1, model.config.block_size), np.int32)
    tokens[0, : len(ids)] = ids
    return np.asarray(_forward_logp(params, tokens, model=model))[0, : len(ids)]


def full_logp(backend: Backend, ids: list[int]) -> np.ndarray:
    return forward_logp(backend.served.model, backend.served.params, ids)


def completion(client: TestClient, **fields) -> dict:
    reply = client.post("/v1/completions", json={"model": "tiny", **fields})
    assert reply.status_code == 200, reply.text
    return reply.json()


PROMPTS = [
    [5],
    [7, 8, 9],
    list(range(10, 10 + CONTEXT)),  # fills the context
    [3] * 20,
    [40, 41, 42, 43, 44],
    [VOCAB - 1, 0, 1, 2],  # the tokenizer's last id, unk, bos, end of text
]


def test_echo_logprobs_equal_the_full_forward_pass(app):
    """Six prompts in one request (two scoring passes of up to four rows): every prompt token's
    logprob and top alternatives as the full forward pass gives them (float32, 1e-5), then the
    greedy next token; len(prompt) + 1 entries, the first null."""
    client, backend = app
    body = completion(client, prompt=PROMPTS, echo=True, max_tokens=1, logprobs=5, temperature=0)
    choices = sorted(body["choices"], key=lambda c: c["index"])
    for prompt, choice in zip(PROMPTS, choices, strict=True):
        logp = full_logp(backend, prompt)
        lp = choice["logprobs"]
        assert len(lp["token_logprobs"]) == len(prompt) + 1 == len(lp["top_logprobs"])
        assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
        want = logp[np.arange(len(prompt) - 1), prompt[1:]]
        np.testing.assert_allclose(lp["token_logprobs"][1:-1], want, atol=1e-5, rtol=0)
        real = logp[:, :VOCAB]  # alternatives are never padding rows of the table
        for j, top in enumerate(lp["top_logprobs"][1:]):
            # Keys are texts: byte pieces that decode alike merge, keeping the best value.
            best = np.sort(real[j])[::-1][:5]
            assert abs(max(top.values()) - best[0]) < 1e-5
            assert all(np.abs(best - v).min() < 1e-5 for v in top.values())
        token = int(np.argmax(real[-1]))  # greedy over the tokenizer's ids
        assert choice["text"][len(choice["text"]) - len(lp["tokens"][-1]) :] == lp["tokens"][-1]
        assert abs(lp["token_logprobs"][-1] - logp[-1, token]) < 1e-5
        assert choice["finish_reason"] == ("stop" if token == 2 else "length")
    assert body["usage"]["prompt_tokens"] == sum(map(len, PROMPTS))


def test_lm_eval_reads_the_loglikelihoods_of_the_continuations(app):
    """lm-eval's own parser on a real response: (sum of the continuation's logprobs, greedy)."""
    api = pytest.importorskip("lm_eval.models.openai_completions").LocalCompletionsAPI
    client, backend = app
    requests = [([7, 8, 9], [10, 11]), ([5], [6]), ([3] * 10, [3, 3, 3])]
    inputs = [c + x for c, x in requests]
    body = completion(client, prompt=inputs, echo=True, max_tokens=1, logprobs=1, temperature=0,
                      seed=1234)  # fmt: skip
    got = api.parse_logprobs(body, inputs, [len(c) for c, _ in requests])
    for (context, cont), (ll, greedy) in zip(requests, got, strict=True):
        logp = full_logp(backend, context + cont)
        at = np.arange(len(context) - 1, len(context) + len(cont) - 1)
        assert abs(ll - logp[at, cont].sum()) < 1e-4
        assert greedy == all(np.argmax(logp[at, :VOCAB], axis=-1) == cont)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_the_echoed_next_token_is_the_first_token_decoding_draws(app, temperature):
    client, _ = app
    for seed in range(3):
        settings = {"prompt": ["the cat", "a dog"], "temperature": temperature, "seed": seed}
        echoed = completion(client, echo=True, max_tokens=1, n=2, **settings)
        decoded = completion(client, max_tokens=1, n=2, **settings)
        for e, d in zip(echoed["choices"], decoded["choices"], strict=True):
            prompt = ["the cat", "a dog"][e["index"] // 2]
            assert e["text"] == prompt + d["text"], (seed, e, d)


def test_echo_without_generating_and_without_logprobs(app):
    client, backend = app
    body = completion(client, prompt="the mat", echo=True, max_tokens=0, logprobs=0)
    [choice] = body["choices"]
    ids = backend.served.tokenizer.encode("the mat")
    assert choice["text"] == "the mat" and choice["finish_reason"] == "length"
    assert len(choice["logprobs"]["tokens"]) == len(ids)
    assert choice["logprobs"]["top_logprobs"][1:] == [{}] * (len(ids) - 1)
    assert body["usage"]["completion_tokens"] == 0
    plain = completion(client, prompt="the mat", echo=True, max_tokens=1)["choices"][0]
    assert plain["logprobs"] is None and plain["text"].startswith("the mat")


def test_scoring_and_decoding_share_the_engine(app):
    """Echo and generation requests at once, from many threads: all answered (no deadlock),
    and the scoring passes are counted in /metrics."""
    client, _ = app

    def metric(name: str) -> float:
        lines = client.get("/metrics").text.splitlines()
        return float(next(x for x in lines if x.startswith(name + " ")).split()[-1])

    passes, tokens = metric("jaxgpt_score_passes_total"), metric("jaxgpt_scored_tokens_total")
    codes: list[int] = []

    def one(i: int) -> None:
        if i % 2:
            body = {"prompt": PROMPTS[: 1 + i % 5], "echo": True, "max_tokens": 1, "logprobs": 1}
        else:
            body = {"prompt": "the cat", "max_tokens": 40, "temperature": 0.9, "seed": i}
        codes.append(client.post("/v1/completions", json={"model": "tiny", **body}).status_code)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert codes == [200] * 12
    echoed = [PROMPTS[: 1 + i % 5] for i in range(1, 12, 2)]
    assert metric("jaxgpt_scored_tokens_total") - tokens == sum(len(p) for e in echoed for p in e)
    rows = sum(map(len, echoed))  # rows of different requests may share a pass of 4
    assert metric("jaxgpt_score_passes_total") - passes >= math.ceil(rows / 4)
    assert metric("jaxgpt_score_pass_rows_count") >= metric("jaxgpt_score_passes_total")


def test_tokenizer_endpoints_with_a_sentencepiece_tokenizer(app):
    client, backend = app
    tok = backend.served.tokenizer
    info = client.get("/tokenizer_info").json()
    assert info["eos_token"] == info["bos_token"] == "</s>"
    assert info["tokenizer_class"] == "jaxgpt-sentencepiece"
    assert tok.encode("</s>") != [tok.eot_id]  # as text it is four characters ...
    # ... but lm-eval asks for the eos id as encode(eos_token)[0]: it must be end of text.
    assert client.post("/tokenize", json={"prompt": "</s>"}).json()["tokens"] == [tok.eot_id]
    ids = client.post("/tokenize", json={"prompt": "the cat", "add_special_tokens": False})
    assert ids.json()["tokens"] == tok.encode("the cat")
    back = client.post("/detokenize", json={"tokens": ids.json()["tokens"]}).json()
    assert back == {"prompt": "the cat"}


BAD = [
    ({"echo": True, "max_tokens": 1, "stream": True}, "echo cannot be streamed"),
    ({"echo": True, "max_tokens": 1, "logprobs": 10}, "logprobs must be 0 to 5"),
    # 300 is a row of the model's table but no token of the tokenizer's.
    ({"echo": True, "max_tokens": 1, "prompt": [[5, 300]]}, f"must be in [0, {VOCAB})"),
    ({"echo": True, "max_tokens": 1, "prompt": [[5] * (CONTEXT + 1)]},
     f"pass max_length={CONTEXT + 1} in --model_args"),
    ({"echo": True, "max_tokens": 1, "best_of": 2}, "best_of is not supported"),
    ({"echo": True, "max_tokens": 1, "logit_bias": {"5": 1.0}}, "logit_bias is not supported"),
    ({"echo": True, "max_tokens": 16}, "echo supports max_tokens 0 (score the prompt) or 1"),
]  # fmt: skip


@pytest.mark.parametrize(("fields", "message"), BAD)
def test_bad_echo_requests_are_400s(app, fields, message):
    client, _ = app
    reply = client.post("/v1/completions", json={"model": "tiny", "prompt": "ab", **fields})
    assert reply.status_code == 400, reply.text
    assert message in reply.json()["error"]["message"]


class StubScorer:
    """Draws end-of-text (id 0) after every prompt; raises once if told to."""

    max_rows = 2

    def __init__(self, fail: bool = False):
        self.fail = fail

    def score(self, prompts, seed_keys, choices, temperature, top_k, top_p) -> list[Scored]:
        if self.fail:
            self.fail = False
            raise RuntimeError("device lost")
        out = []
        for p in prompts:
            n = len(p)
            top = np.tile(np.array([[0, 1]]), (n, 1))
            out.append(Scored(np.full(n - 1, -1.0), top, np.full((n, 2), -0.5), 0, -0.25))
        return out


def echo_events(scorer: StubScorer, jobs: int = 1) -> list[Event]:
    """The events of `jobs` echo jobs (max_tokens 1, logprobs) run by an engine with `scorer`."""
    tokenizer = type("T", (), {"eot_id": 0, "decode": lambda self, ids: "x" * len(ids)})()
    decoder = type("D", (), {"max_batch": 1, "config": None})()
    engine = Engine(decoder, tokenizer, 8, scorer=scorer)
    events: list[Event] = []
    engine.start()
    for k in range(jobs):  # one row each: one event each
        job = Job([[4, 5, 6]], 1, 1, 0.0, 1.0, 0, [], 0, True, False, events.append, echo=True)
        engine.submit(job)
        deadline = time.monotonic() + 10
        while len(events) <= k:
            assert time.monotonic() < deadline, "the engine never answered"
            time.sleep(0.01)
    engine.stop(10)
    return events


def test_end_of_text_drawn_after_an_echoed_prompt_is_an_entry():
    """lm-eval cuts the last entry off as the generated token: it must be there even when that
    token is end of text, or a real continuation token is lost."""
    [event] = echo_events(StubScorer())
    assert (event.text, event.n_tokens, event.finish_reason) == ("", 1, "stop")
    assert [t.token for t in event.logprobs] == [4, 5, 6, 0]
    assert [t.logprob for t in event.logprobs] == [None, -1.0, -1.0, -0.25]
    assert event.logprobs[0].top is None and event.logprobs[-1].top == [(0, -0.5), (1, -0.5)]


def test_a_failed_scoring_pass_answers_its_rows_with_an_error_and_serving_goes_on():
    failed, answered = echo_events(StubScorer(fail=True), jobs=2)
    assert (failed.finish_reason, failed.error) == ("error", "scoring failed: RuntimeError: "
                                                    "device lost")  # fmt: skip
    assert answered.finish_reason == "stop" and answered.error is None


def test_chunks_of_the_output_projection_fit_the_budget():
    assert chunk_size(8, 1024, 50304) == 128  # 8 × 128 × 50304 floats ≤ 2**26
    assert chunk_size(1, 32, 320) == 32  # small: the whole length at once
    assert chunk_size(64, 2048, 2**20) == 1  # at least one position


# ---------------------------------------------------------------------------------------------
# lm-eval's local-completions against a real server process.

TASKS = {
    "toy_mc": (
        "multiple_choice",
        [{"question": "the cat sat on the", "choices": ["mat", "dog", "hat"], "answer": 0},
         {"question": "a dog ran to the", "choices": ["hat", "cat"], "answer": 0},
         {"question": "the mat", "choices": [" 3.", " 5.", " a"], "answer": 1}],
        'doc_to_text: "{{question}}"\ndoc_to_choice: choices\ndoc_to_target: answer\n'
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n",
    ),
    "toy_ppl": (
        "loglikelihood_rolling",
        # The second document is longer than the context: several rolling windows.
        [{"text": "the cat sat on the mat 3."},
         {"text": "a dog ran to the hat. the cat sat on the mat 4. a dog ran to the hat."}],
        'doc_to_text: ""\ndoc_to_target: "{{text}}"\n'
        "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n",
    ),
    "toy_gen": (
        "generate_until",
        [{"question": "the cat sat", "answer": " on"}, {"question": "a dog", "answer": " ran"}],
        'doc_to_text: "{{question}}"\ndoc_to_target: "{{answer}}"\n'
        'generation_kwargs:\n  until: ["\\n", ".", "x", "q", "z"]\n  max_gen_toks: 6\n'
        "  do_sample: false\n  temperature: 0.0\n"
        "metric_list:\n  - metric: exact_match\n",
    ),
}  # fmt: skip


def write_tasks(folder: Path) -> None:
    """YAML + JSONL per task; data_files are absolute (lm-eval resolves them from the CWD)."""
    for name, (kind, docs, rest) in TASKS.items():
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(d) + "\n" for d in docs))
        (folder / f"{name}.yaml").write_text(
            f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
            f"    test: {data}\ntest_split: test\noutput_type: {kind}\n{rest}"
        )


@pytest.fixture(scope="module")
def lm_eval_run(tmp_path_factory):
    """A tiny trained run served by `python -m jaxgpt.serve`, and lm-eval's results on it."""
    pytest.importorskip("lm_eval")
    from jaxgpt.run.loop import train
    from jaxgpt.workdir import load_run
    from tests.helpers import tiny_config

    sys.path.insert(0, str(REPO / "benchmarks"))
    from serve_abuse import ServerProcess

    tmp = tmp_path_factory.mktemp("lmeval")
    corpus = tmp / "corpus.txt"
    corpus.write_text(TEXT)
    settings = {"train.steps": 6, "train.eval_every": 6, "ckpt.every": 6, "model.dropout": 0.0}
    train(tiny_config(corpus, **settings), tmp / "run")
    tasks = tmp / "tasks"
    tasks.mkdir()
    write_tasks(tasks)
    server = ServerProcess(
        tmp / "run", tmp / "server.log", "--max_batch", "4", "--model_name", "tiny"
    )
    try:
        server.wait_ready(timeout=300)
        results = run_lm_eval(server.url, tasks, tmp / "hf")
    finally:
        code, _ = server.stop()
    assert code == 0, server.log_tail()
    return load_run(tmp / "run"), results


def run_lm_eval(url: str, tasks: Path, cache: Path) -> dict:
    """simple_evaluate with local-completions, offline (nothing may come from the hub)."""
    env = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(cache),
           "HF_HOME": str(cache)}  # fmt: skip
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager

        args = (f"model=tiny,base_url={url}/v1/completions,tokenizer_backend=remote,"
                f"max_length={CONTEXT + 1},batch_size=4,max_retries=1")  # fmt: skip
        return lm_eval.simple_evaluate(
            model="local-completions",
            model_args=args,
            tasks=list(TASKS),
            task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
            log_samples=True,
            bootstrap_iters=0,
        )
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def encode_pair(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's TemplateLM._encode_pair for a causal model."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole, ctx = tok.encode(context + continuation), tok.encode(context)
    return ctx, whole[len(ctx) :]


def direct_loglikelihood(run, context: list[int], continuation: list[int]) -> float:
    ids = (context + continuation)[-CONTEXT:]
    ctxlen = len(ids) - len(continuation)
    logp = forward_logp(run.model, run.params, ids)
    return float(logp[np.arange(ctxlen - 1, len(ids) - 1), ids[ctxlen:]].sum())


@pytest.mark.e2e
@pytest.mark.slow
def test_lm_eval_runs_every_kind_of_task_through_the_server(lm_eval_run):
    _, results = lm_eval_run
    for task, metric in (("toy_mc", "acc,none"), ("toy_ppl", "bits_per_byte,none"),
                         ("toy_gen", "exact_match,none")):  # fmt: skip
        value = results["results"][task][metric]
        assert math.isfinite(value), (task, results["results"][task])
    assert results["results"]["toy_ppl"]["bits_per_byte,none"] > 0
    # Generation ran through the server's stop strings ("until" and the end-of-text string).
    for sample in results["samples"]["toy_gen"]:
        [[text]] = sample["resps"]
        assert isinstance(text, str) and not any(s in text for s in ("\n", ".", "x", "</s>"))


@pytest.mark.e2e
@pytest.mark.slow
def test_lm_eval_loglikelihoods_equal_a_direct_forward_pass(lm_eval_run):
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    run, results = lm_eval_run
    tok = run.tokenizer
    for sample in results["samples"]["toy_mc"]:
        for (context, continuation), [(ll, _)] in zip(
            sample["arguments"], sample["resps"], strict=True
        ):
            want = direct_loglikelihood(run, *encode_pair(tok, context, continuation))
            assert abs(ll - want) < 1e-4, (context, continuation, ll, want)
    for sample in results["samples"]["toy_ppl"]:
        [(text,)] = [a for a in sample["arguments"]]
        windows = get_rolling_token_windows(tok.encode(text), tok.eot_id, CONTEXT - 1, 1)
        want = sum(direct_loglikelihood(run, *make_disjoint_window(w)) for w in windows)
        [got] = sample["resps"][0]
        assert abs(got - want) < 1e-4, (text, got, want)
