"""lm-evaluation-harness through jaxgpt (jaxgpt/lm_eval_model.py): the scoring kernel against the
full forward pass and across meshes, generation against generate_batch, per-request parity with
lm-eval's own `hf` model on the exported folder, `evaluate --tasks`, lm-eval's CLI with
`--model jaxgpt`, and train.eval_tasks. Offline: every task is local YAML + JSONL made here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # nothing may be downloaded
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("lm_eval")

from jaxgpt import lm_eval_model
from jaxgpt import sharding as sharding_lib
from jaxgpt.config.run import MeshConfig
from jaxgpt.decode.generate import generate_batch
from jaxgpt.evaluate import main as evaluate_main
from jaxgpt.model import GPT, GPTConfig
from jaxgpt.run.loop import train
from jaxgpt.state import make_scorer
from tests.helpers import tiny_config

REPO = Path(__file__).resolve().parent.parent
CFG = GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=32)
EOT = 0
TASKS = ["toy_mc", "toy_ppl", "toy_gen"]
WORDS = (
    "the quick brown fox jumps over a lazy dog while seven wizards quietly hex jovial kings "
    "and queens by the river bank"
).split()


# ---------------------------------------------------------------- local tasks


def write_tasks(root: Path) -> Path:
    """One task of each kind lm-eval has (multiple_choice, loglikelihood_rolling with documents
    longer than the 32-token context, generate_until), on JSONL files next to their YAML."""
    root.mkdir(parents=True, exist_ok=True)
    mc = [
        {"question": "the quick brown", "choices": [" fox", " dog", " kings"], "answer": 0},
        {"question": "jumps over a lazy", "choices": [" river", " dog", " hex"], "answer": 1},
        {"question": "seven wizards quietly", "choices": [" hex", " bank", " the"], "answer": 0},
        {"question": "jovial kings and", "choices": [" fox", " over", " queens"], "answer": 2},
        {"question": "", "choices": ["the", "zzz", "qqq"], "answer": 0},  # empty context: EOT
    ]
    ppl = [
        {"text": " ".join(WORDS) + " 12."},
        {"text": "a lazy dog"},
        {"text": " ".join(WORDS[8:] + WORDS[:8]) + " again and again."},
    ]
    gen = [
        {"prompt": "the quick brown", "target": " fox"},
        {"prompt": "seven wizards", "target": " quietly"},
        {"prompt": "by the river", "target": " bank"},
    ]
    for name, rows in (("mc", mc), ("ppl", ppl), ("gen", gen)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    kinds = {
        "toy_mc": ("mc", "multiple_choice", '"{{question}}"', '"{{answer}}"'),
        "toy_ppl": ("ppl", "loglikelihood_rolling", '""', '"{{text}}"'),
        "toy_gen": ("gen", "generate_until", '"{{prompt}}"', '"{{target}}"'),
    }
    metrics = {
        "toy_mc": [("acc", "mean", "true"), ("acc_norm", "mean", "true")],
        "toy_ppl": [
            ("word_perplexity", "weighted_perplexity", "false"),
            ("byte_perplexity", "weighted_perplexity", "false"),
            ("bits_per_byte", "bits_per_byte", "false"),
        ],
        "toy_gen": [("exact_match", "mean", "true")],
    }
    for task, (data, kind, text, target) in kinds.items():
        lines = [
            f"task: {task}",
            "dataset_path: json",
            "dataset_kwargs:",
            f"  data_files: {{test: {root / (data + '.jsonl')}}}",  # absolute: lm-eval reads
            f"  cache_dir: {root / 'hf_cache'}",  # relative paths from the CWD
            "test_split: test",
            f"output_type: {kind}",
            f"doc_to_text: {text}",
            f"doc_to_target: {target}",
        ]
        if kind == "multiple_choice":
            lines.append('doc_to_choice: "{{choices}}"')
        if kind == "generate_until":
            lines.append('generation_kwargs: {until: ["\\n", "."], max_gen_toks: 12}')
        lines.append("metric_list:")
        for metric, aggregation, higher in metrics[task]:
            lines.append(f"  - {{metric: {metric}, aggregation: {aggregation}, ")
            lines[-1] += f"higher_is_better: {higher}}}"
        (root / f"{task}.yaml").write_text("\n".join(lines) + "\n")
    return root


# ---------------------------------------------------------------- the kernel, on random weights


class Chars:
    """A stand-in tokenizer: what ShardedLM reads (EOT and the vocabulary's size)."""

    eot_id, vocab_size = EOT, CFG.vocab_size


def random_params(seed: int = 0) -> dict:
    dummy = jnp.zeros((1, CFG.block_size), jnp.int32)
    return nn.unbox(GPT(CFG).init(jax.random.key(seed), dummy)["params"])


def sharded_lm(
    params: dict, mesh_cfg: MeshConfig, devices=None, **options
) -> lm_eval_model.ShardedLM:
    mesh = sharding_lib.make_mesh(mesh_cfg, devices)
    scorer = make_scorer(GPT(CFG), mesh, mesh_cfg.rules)
    placement = lm_eval_model.Placement(
        mesh, mesh_cfg.rules, scorer.params_sharding, scorer.batch_sharding
    )
    placed = jax.device_put(params, scorer.params_sharding)
    return lm_eval_model.ShardedLM(GPT(CFG), placed, Chars(), placement, **options)


def random_pairs(n: int, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """(context, continuation) token pairs of many lengths, some longer than the context."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n):
        n_ctx, n_cont = int(rng.integers(1, 40)), int(rng.integers(1, 8))
        pairs.append((rng.integers(1, 64, n_ctx).tolist(), rng.integers(1, 64, n_cont).tolist()))
    return pairs


def reference(params: dict, pairs, L: int) -> list[tuple[float, bool]]:
    """What lm-eval's `hf` model computes: window (context + continuation)[-(L+1):], the full
    forward pass (one right-padded batch: the model is causal), log-softmax, the
    continuation's targets."""
    windows = [(c + k)[-(L + 1) :] for c, k in pairs]
    batch = np.zeros((len(windows), max(map(len, windows))), np.int32)
    for row, window in zip(batch, windows, strict=True):
        row[: len(window)] = window
    logits = jax.jit(GPT(CFG).apply)({"params": params}, jnp.asarray(batch[:, :-1]))
    logp = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32)))
    out = []
    for row, window, (_, continuation) in zip(logp, windows, pairs, strict=True):
        n, end = len(continuation), len(window) - 1
        targets, rows = np.asarray(window[-n:]), row[end - n : end]
        out.append(
            (float(rows[np.arange(n), targets].sum()), bool((rows.argmax(-1) == targets).all()))
        )
    return out


def test_bucket_length():
    assert [lm_eval_model.bucket_length(n, 1024) for n in (1, 16, 17, 100, 1000)] == [
        16, 16, 32, 128, 1024,
    ]  # fmt: skip
    assert lm_eval_model.bucket_length(40, 33) == 33  # never past max_length


def test_loglikelihood_equals_the_full_forward_pass():
    params = random_params()
    lm = sharded_lm(params, MeshConfig(), batch_size=4)  # data=8: rows spread over 8 devices
    assert lm.batch_size == 8  # rounded up to the data-parallel size
    pairs = [*random_pairs(21), ([5], [7])]
    got = lm.loglikelihood(pairs)
    want = reference(params, pairs, CFG.block_size)
    np.testing.assert_allclose([g[0] for g in got], [w[0] for w in want], atol=1e-4)
    assert [g[1] for g in got] == [w[1] for w in want]
    # A continuation that is greedy: the argmax after [5] is greedy by construction.
    logits = GPT(CFG).apply({"params": params}, jnp.asarray([[5]]))[0, -1]
    assert lm.loglikelihood([([5], [int(jnp.argmax(logits))])])[0][1] is True


@pytest.mark.slow  # three meshes to compile for
def test_meshes_agree_and_max_length_truncates():
    """fsdp (params split over 8 devices) and tensor x fsdp give what one device gives."""
    params = random_params(1)
    pairs = random_pairs(13, seed=1)
    one = sharded_lm(params, MeshConfig(data=1), devices=jax.devices()[:1]).loglikelihood(pairs)
    for mesh_cfg in (MeshConfig(data=1, fsdp=8), MeshConfig(data=2, fsdp=2, tensor=2)):
        got = sharded_lm(params, mesh_cfg).loglikelihood(pairs)
        np.testing.assert_allclose([g[0] for g in got], [o[0] for o in one], atol=1e-4)
    short = sharded_lm(params, MeshConfig(), max_length=10).loglikelihood(pairs)
    want = reference(params, pairs, 10)
    np.testing.assert_allclose([g[0] for g in short], [w[0] for w in want], atol=1e-4)


def test_rolling_windows_predict_each_token_once():
    """A document within the context scores as one request after EOT; a long one is cut into
    windows whose predictions add up to the same total as lm-eval's `hf` windowing."""
    lm = lm_eval_model.lm_class()(backend=sharded_lm(random_params(2), MeshConfig()))
    backend = lm.backend
    short = list(range(1, 20))
    requests = [SimpleNamespace(args=("s",)), SimpleNamespace(args=("l",))]
    long = [int(t) for t in np.random.default_rng(3).integers(1, 64, 75)]
    lm.tok_encode = {"s": short, "l": long}.get  # the documents, as token ids
    totals = lm.loglikelihood_rolling(requests)
    assert totals[0] == pytest.approx(backend.loglikelihood([([EOT], short)])[0][0], abs=1e-4)
    L = CFG.block_size
    windows = [([EOT], long[:L])]  # the first L tokens after EOT, then L at a time
    for start in range(L, len(long), L):
        end = min(start + L, len(long))
        windows.append((long[end - L - 1 : start], long[start:end]))  # L+1 tokens end at end
    want = sum(lp for lp, _ in backend.loglikelihood(windows))
    assert totals[1] == pytest.approx(want, abs=1e-3)


@pytest.mark.slow  # a compile per prompt length for the row-by-row reference
def test_generation_matches_generate_batch_row_by_row():
    """Batched, bucketed generation (filler rows, one shape per bucket) draws what decoding
    each prompt alone draws."""
    params = random_params(4)
    lm = sharded_lm(params, MeshConfig(), batch_size=3, max_gen_toks=6)
    prompts = [[1, 2, 3], [4] * 11, [], list(range(1, 30))]
    got = lm.generate(prompts, 6)
    room = CFG.block_size - 6
    for prompt, ids in zip(prompts, got, strict=True):
        row = (prompt or [EOT])[-room:]
        alone = generate_batch(
            GPT(CFG), params, [row], 6, jax.random.key(0), 0.0, vocab_limit=64, eot_id=EOT
        )[0]
        assert ids == (alone[: alone.index(EOT)] if EOT in alone else alone)
    with pytest.raises(ValueError, match="max_gen_toks=40 leaves no room"):
        lm.generate(prompts, 40)


def test_generation_settings():
    assert lm_eval_model.sampling_settings({"do_sample": False, "temperature": 0.7}) == (
        0.0, 0, 1.0,
    )  # fmt: skip
    assert lm_eval_model.sampling_settings(
        {"do_sample": True, "temperature": 0.7, "top_k": 5, "num_beams": 1}
    ) == (0.7, 5, 1.0)
    with pytest.raises(ValueError, match="num_beams=4 is not supported"):
        lm_eval_model.sampling_settings({"num_beams": 4})


def test_task_scores_are_flat_and_drop_stderr():
    results = {
        "results": {
            "toy_mc": {"alias": "toy_mc", "acc,none": 0.5, "acc_stderr,none": 0.1},
            "gsm": {"exact_match,strict-match": 1.0, "exact_match_stderr,strict-match": "N/A"},
        }
    }
    assert lm_eval_model.task_scores(results) == {
        "task/toy_mc/acc": 0.5,
        "task/gsm/exact_match/strict-match": 1.0,
    }


def test_generation_tasks_are_refused_for_training(tmp_path):
    tasks = write_tasks(tmp_path / "tasks")
    with pytest.raises(ValueError, match=r"train.eval_tasks=.*\['toy_gen'\] are not loglikelihood"):
        lm_eval_model.load_scoring_tasks(["toy_mc", "toy_gen"], str(tasks), "train.eval_tasks='x'")


# ---------------------------------------------------------------- a trained run


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> SimpleNamespace:
    """A tiny char model trained 150 steps with train.eval_tasks on (evals at 75 and 150), and
    the three local tasks. ~40 s on 2 cores."""
    root = tmp_path_factory.mktemp("lm_eval")
    lines = [
        " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(8)) + f" {i % 97}."
        for i in range(1500)
    ]
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(lines) + "\n")
    tasks = write_tasks(root / "tasks")
    config = tiny_config(
        corpus,
        **{
            "model.dropout": 0.0,
            "train.steps": 150,
            "train.eval_every": 75,
            "train.sample_tokens": 0,
            "train.eval_tasks": "toy_mc,toy_ppl",
            "train.eval_tasks_path": str(tasks),
            "ckpt.every": 150,
        },
    )
    started = time.time()
    train(config, root / "run")
    print(f"trained in {time.time() - started:.1f}s")
    return SimpleNamespace(root=root, workdir=root / "run", tasks=tasks)


def _eval_lines(workdir: Path) -> dict[int, dict]:
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in lines if "eval_loss" in r}


@pytest.mark.slow
def test_training_logs_task_scores_at_each_eval(trained):
    evals = _eval_lines(trained.workdir)
    assert sorted(evals) == [75, 150]
    for line in evals.values():
        assert 0.0 <= line["task/toy_mc/acc"] <= 1.0
        assert line["task/toy_ppl/bits_per_byte"] > 0
        assert not any("stderr" in k for k in line)
    # Training makes the perplexity task better: the scores follow the params.
    assert evals[150]["task/toy_ppl/bits_per_byte"] < evals[75]["task/toy_ppl/bits_per_byte"]


@pytest.mark.slow
def test_evaluate_tasks_command(trained, tmp_path, capsys):
    """`evaluate --tasks`: lm-eval's table, its results and samples files, and the scores the
    training logged for the same params at its last evaluation."""
    out = tmp_path / "out"
    evaluate_main([
        "--workdir", str(trained.workdir), "--tasks", ",".join(TASKS),
        "--include_path", str(trained.tasks), "--output_path", str(out), "--log_samples",
        "--json", str(tmp_path / "scores.json"),
    ])  # fmt: skip
    printed = capsys.readouterr().out
    assert "|toy_mc |" in printed and "bits_per_byte" in printed and "exact_match" in printed
    (results_file,) = (out / "run").glob("results_*.json")
    results = json.loads(results_file.read_text())
    assert set(results["results"]) == set(TASKS)
    assert results["config"]["model"] == "jaxgpt"
    assert len(list((out / "run").glob("samples_toy_*.jsonl"))) == 3
    scores = json.loads((tmp_path / "scores.json").read_text())
    logged = _eval_lines(trained.workdir)[150]
    for key in ("task/toy_mc/acc", "task/toy_mc/acc_norm", "task/toy_ppl/bits_per_byte"):
        assert scores[key] == pytest.approx(logged[key], rel=1e-5)


@pytest.mark.slow
def test_same_results_as_lm_evals_hf_model_on_the_export(trained):
    """Per request (loglikelihoods to 1e-4, greedy flags, generated text) and per metric."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")  # lm-eval's `hf` model imports it
    import lm_eval

    from jaxgpt.export import main as export_main

    hf_dir = trained.root / "hf"
    if not hf_dir.exists():
        export_main(["--workdir", str(trained.workdir), "--out", str(hf_dir)])
    common = dict(tasks=TASKS, log_samples=True, bootstrap_iters=0, batch_size=8)
    started = time.time()
    ours = lm_eval_model.run_tasks(
        trained.workdir, TASKS, include_path=str(trained.tasks), batch_size=8, log_samples=True
    )
    ours_s = time.time() - started
    started = time.time()
    hf = lm_eval.simple_evaluate(
        model="hf",
        model_args={
            "pretrained": str(hf_dir),
            "dtype": "float32",
            "device": "cpu",
            "max_length": 32,
        },
        task_manager=lm_eval_model.task_manager(TASKS, str(trained.tasks)),
        **common,
    )
    print(f"in-process {ours_s:.1f}s, hf {time.time() - started:.1f}s")
    for task in TASKS:
        mine = {s["doc_id"]: s["resps"] for s in ours["samples"][task]}
        theirs = {s["doc_id"]: s["resps"] for s in hf["samples"][task]}
        assert mine.keys() == theirs.keys()
        for doc, resps in theirs.items():
            for a, b in zip(mine[doc], resps, strict=True):
                a, b = a[0], b[0]
                if task == "toy_gen":
                    assert a == b
                elif task == "toy_ppl":
                    assert a == pytest.approx(b, abs=1e-4)
                else:
                    assert a[0] == pytest.approx(b[0], abs=1e-4) and a[1] == b[1]
        for key, value in hf["results"][task].items():
            if isinstance(value, float):
                assert ours["results"][task][key] == pytest.approx(value, rel=1e-5), key
    # Documents of several windows were part of it (a char model: about a token per char).
    assert any(len(s["doc"]["text"]) > 3 * 32 for s in hf["samples"]["toy_ppl"])


@pytest.mark.e2e
def test_lm_eval_command_line_with_model_jaxgpt(trained, tmp_path):
    """lm-eval's own CLI, `--model jaxgpt --model_args pretrained=DIR`, in a fresh process."""
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "jaxgpt.lm_eval_model", "--model", "jaxgpt",
        "--model_args", f"pretrained={trained.workdir}", "--batch_size", "8",
        "--tasks", "toy_mc", "--include_path", str(trained.tasks), "--output_path", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "|toy_mc|" in done.stdout.replace(" ", "")
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    logged = _eval_lines(trained.workdir)[150]
    assert results["results"]["toy_mc"]["acc,none"] == pytest.approx(logged["task/toy_mc/acc"])


@pytest.mark.slow
@pytest.mark.e2e
def test_two_processes_score_tasks_as_one_does(tmp_path):
    """train.eval_tasks in 2 processes x 2 devices (params and rows spread over both) logs the
    scores of 1 process x 4 devices: every process ran every forward pass in step."""
    from tests.multiprocess_harness import run, run_two_processes, train_args

    tasks = write_tasks(tmp_path / "tasks")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(
        "\n".join(" ".join(WORDS[(i * 7 + j) % 22] for j in range(9)) for i in range(2000))
    )
    extra = [
        "--config.mesh.data=1", "--config.mesh.fsdp=4", "--config.train.sample_tokens=0",
        "--config.train.eval_tasks=toy_mc,toy_ppl", f"--config.train.eval_tasks_path={tasks}",
    ]  # fmt: skip
    run(train_args(corpus, tmp_path / "one", 20, *extra), 4, tmp_path / "one.log")
    run_two_processes(train_args(corpus, tmp_path / "two", 20, *extra), tmp_path)
    one, two = _eval_lines(tmp_path / "one"), _eval_lines(tmp_path / "two")
    assert sorted(one) == sorted(two) == [10, 20]
    for step, line in one.items():
        scores = {k: v for k, v in line.items() if k.startswith("task/")}
        assert len(scores) == 5
        for key, value in scores.items():
            assert two[step][key] == pytest.approx(value, rel=1e-5), (step, key)
    assert "toy_mc: acc" in (tmp_path / "proc0.log").read_text()
    assert "toy_mc: acc" not in (tmp_path / "proc1.log").read_text()  # process 0 reports


def _per_request(result: dict, task: str) -> dict[int, list]:
    return {s["doc_id"]: [r[0] for r in s["resps"]] for s in result["samples"][task]}


@pytest.mark.slow
@pytest.mark.e2e
def test_three_ways_agree_in_process_through_the_server_and_hf(trained, tmp_path):
    """The same tasks in-process, with local-completions against `jaxgpt.serve` and with lm-eval's
    `hf` model on the export give the same requests' loglikelihoods (1e-4), greedy flags,
    generations and scores. The server's max_length=C+1 is the others' C-1 (docs/evaluation.md:
    local-completions keeps one position for the token it asks to be generated)."""
    pytest.importorskip("accelerate")
    import lm_eval

    from jaxgpt.export import main as export_main

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from serve_abuse import ServerProcess

    context = 32
    hf_dir = trained.root / "hf"
    if not hf_dir.exists():
        export_main(["--workdir", str(trained.workdir), "--out", str(hf_dir)])
    manager = lm_eval_model.task_manager(TASKS, str(trained.tasks))
    common = dict(tasks=TASKS, log_samples=True, bootstrap_iters=0)
    ours = lm_eval_model.run_tasks(
        trained.workdir, TASKS, include_path=str(trained.tasks), batch_size=8,
        max_length=context - 1, log_samples=True,
    )  # fmt: skip
    hf_args = {"pretrained": str(hf_dir), "dtype": "float32", "device": "cpu"}
    hf = lm_eval.simple_evaluate(
        model="hf", model_args={**hf_args, "max_length": context - 1}, task_manager=manager,
        batch_size=8, **common,
    )  # fmt: skip
    server = ServerProcess(trained.workdir, tmp_path / "serve.log")
    try:
        server.wait_ready(timeout=600)
        args = (f"model=run,base_url={server.url}/v1/completions,tokenizer_backend=remote,"
                f"max_length={context + 1},batch_size=4,max_retries=1")  # fmt: skip
        served = lm_eval.simple_evaluate(
            model="local-completions", model_args=args, task_manager=manager, **common
        )
    finally:
        server.proc.terminate()
        server.proc.wait(60)
    for task in TASKS:
        want = _per_request(hf, task)
        for name, result in (("in-process", ours), ("server", served)):
            got = _per_request(result, task)
            assert got.keys() == want.keys(), (name, task)
            for doc, answers in want.items():
                for a, b in zip(got[doc], answers, strict=True):
                    if task == "toy_gen":
                        assert a == b, (name, doc)
                    elif task == "toy_ppl":
                        assert a == pytest.approx(b, abs=1e-4), (name, doc)
                    else:
                        assert a[0] == pytest.approx(b[0], abs=1e-4) and a[1] == b[1], (name, doc)
