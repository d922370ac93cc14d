"""lm-evaluation-harness on jaxgpt: the `jaxgpt` lm-eval model, scoring and generating with the
sharded model on the mesh the run was trained with (so a model too big for one device works).

Semantics follow lm-eval's own `hf` model, so scores equal `--model hf` on the folder that
`python -m jaxgpt.export` writes: a loglikelihood request scores (context + continuation)
[-(max_length + 1):] (inputs are all but its last token); a rolling (perplexity) request is cut
into windows of max_length predictions with EOT as the prefix token; generation is greedy (or
sampled, when a task asks) through the KV cache, with the context cut to max_length -
max_gen_toks tokens, stopped at EOT and cut at the first `until` string.

lm_eval itself is imported only inside functions: training (train.eval_tasks) and the plain
`evaluate` command import this module, and neither may need the [eval] extra unless used. So the
lm-eval class is assembled on first use by `lm_class()` (HarnessMethods on lm-eval's
TemplateLM) and registered then as "jaxgpt".
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from jaxgpt import cpu_devices, host_memory
from jaxgpt import sharding as sharding_lib
from jaxgpt.config.run import MeshConfig, Rules
from jaxgpt.config.tree import from_dict
from jaxgpt.decode.generate import generate_batch
from jaxgpt.model import GPT, output_table
from jaxgpt.state import make_scorer
from jaxgpt.workdir import load_run

MISSING = (
    "lm-evaluation-harness is not installed: pip install 'jaxgpt[eval]' "
    "(needed by evaluate --tasks, python -m jaxgpt.lm_eval_model and train.eval_tasks)"
)
# The shortest padded length: below it, compiling another shape costs more than it saves.
MIN_BUCKET = 16
LOGIT_CHUNK = 128  # positions whose [B, C, V] logits exist at once (model.loss_chunk if set)
SAMPLING_SEED = 1234  # lm-eval's default seed, for tasks that sample
FEWSHOT_SEED = 1234  # lm-eval's default seed for drawing few-shot examples
SCORING_TYPES = ("multiple_choice", "loglikelihood", "loglikelihood_rolling")
# Generation settings some task YAMLs pass that mean plain decoding: accepted when they say so.
NEUTRAL_GEN_KWARGS = {"num_beams": 1, "repetition_penalty": 1.0, "top_k": 0, "top_p": 1.0}


def bucket_length(n: int, limit: int) -> int:
    """Padded length for n positions: the next power of two, at least MIN_BUCKET, at most limit
    (so jit compiles a few shapes, not one per length)."""
    return min(max(MIN_BUCKET, 1 << max(n - 1, 0).bit_length()), limit)


def score_rows(
    params: Any, tokens_BT1: jax.Array, mask_BT: jax.Array, *, model: GPT, chunk: int
) -> jax.Array:
    """[B, 2] float32: per row, the summed log-probability of the targets tokens[:, 1:] where
    mask_BT is 1, and how many of those targets are not the argmax (0 = greedy).

    Full-vocabulary float32 log-softmax, as the exported model gives lm-eval's `hf`; logits
    are made `chunk` positions at a time, never [B, T, V] at once."""
    inputs_BT, targets_BT = tokens_BT1[:, :-1], tokens_BT1[:, 1:]
    hidden_BTD = model.apply({"params": params}, inputs_BT, True, method=GPT.hidden_states)
    emb_VD = output_table(params)
    B, T, _ = hidden_BTD.shape
    chunk = max(1, min(chunk, T))
    n_chunks = -(-T // chunk)
    pad = n_chunks * chunk - T
    mask_BT = mask_BT.astype(jnp.float32)
    if pad:
        hidden_BTD = jnp.pad(hidden_BTD, ((0, 0), (0, pad), (0, 0)))
        targets_BT, mask_BT = (jnp.pad(x, ((0, 0), (0, pad))) for x in (targets_BT, mask_BT))

    def by_chunk(x: jax.Array) -> jax.Array:  # [B, K·C, ...] → [K, B, C, ...]
        return jnp.swapaxes(x.reshape(B, n_chunks, chunk, *x.shape[2:]), 0, 1)

    def body(carry, xs):
        h_BCD, t_BC, m_BC = xs
        # As GPT.logits: both operands in the compute dtype, then float32 for the softmax.
        logits_BCV = jnp.dot(h_BCD, emb_VD.astype(h_BCD.dtype).T)
        logits_BCV = nn.with_logical_constraint(logits_BCV, ("batch", "act_seq", "act_vocab"))
        logits_BCV = logits_BCV.astype(jnp.float32)
        logp_BC = jnp.take_along_axis(jax.nn.log_softmax(logits_BCV), t_BC[..., None], -1)[..., 0]
        miss_BC = (jnp.argmax(logits_BCV, -1) != t_BC).astype(jnp.float32)
        return (carry[0] + jnp.sum(logp_BC * m_BC, 1), carry[1] + jnp.sum(miss_BC * m_BC, 1)), None

    zeros = jnp.zeros((B,), jnp.float32)
    (logp_B, miss_B), _ = jax.lax.scan(
        body, (zeros, zeros), (by_chunk(hidden_BTD), by_chunk(targets_BT), by_chunk(mask_BT))
    )
    return jnp.stack([logp_B, miss_B], axis=1)


@dataclasses.dataclass
class Placement:
    """Where the model lives: its mesh, logical rules and the params' shardings."""

    mesh: Mesh
    rules: Rules
    params_sharding: Any
    batch_sharding: NamedSharding

    @property
    def batch_multiple(self) -> int:
        """Rows of a batch must split evenly over the data-parallel devices."""
        return sharding_lib.batch_axis_size(self.mesh, self.rules)


class ShardedLM:
    """Scores and generates with a GPT on a mesh. Every process must make the same calls with
    the same requests (multi-process runs are SPMD); each feeds its own share of the rows."""

    def __init__(
        self,
        model: GPT,
        params: Any,
        tokenizer: Any,
        placement: Placement,
        batch_size: int = 32,
        max_length: int = 0,
        max_gen_toks: int = 256,
    ):
        """params: already placed by placement.params_sharding. max_length 0 = the context."""
        block = model.config.block_size
        self.model, self.params, self.tokenizer = model, params, tokenizer
        self.placement = placement
        self.workdir: str | None = None  # where the params came from, for lm-eval's records
        self.step: int | None = None
        self.max_length = max_length or block
        if not 1 <= self.max_length <= block:
            raise ValueError(f"max_length={max_length} must be between 1 and the context {block}")
        self.max_gen_toks = max_gen_toks
        multiple = placement.batch_multiple
        self.batch_size = -(-max(batch_size, 1) // multiple) * multiple
        chunk = model.config.loss_chunk or LOGIT_CHUNK
        self._score = jax.jit(
            functools.partial(score_rows, model=model, chunk=chunk),
            in_shardings=(placement.params_sharding, placement.batch_sharding,
                          placement.batch_sharding),
            out_shardings=sharding_lib.replicated(placement.mesh),
        )  # fmt: skip

    @classmethod
    def from_workdir(cls, workdir: str | Path, step: int | None = None, **options) -> ShardedLM:
        """A training run's params (best, else latest, or `step`) on the mesh it trained with."""
        run = load_run(workdir, step)
        mesh_cfg = from_dict(MeshConfig, run.config.get("mesh", {}), "mesh.")
        cpu_devices.configure(mesh_cfg.cpu_devices, mesh_cfg, (options.get("batch_size", 32),))
        mesh = sharding_lib.make_mesh(mesh_cfg)
        scorer = make_scorer(run.model, mesh, mesh_cfg.rules)
        placement = Placement(mesh, mesh_cfg.rules, scorer.params_sharding, scorer.batch_sharding)
        params = jax.device_put(run.params, scorer.params_sharding)
        lm = cls(run.model, params, run.tokenizer, placement, **options)
        lm.workdir, lm.step = str(workdir), run.step
        return lm

    @property
    def eot_id(self) -> int:
        return self.tokenizer.eot_id

    def loglikelihood(
        self, pairs: Sequence[tuple[list[int], list[int]]]
    ) -> list[tuple[float, bool]]:
        """(log p(continuation | context), continuation is greedy) per (context, continuation)
        token pair; a pair longer than max_length + 1 tokens loses its oldest context tokens."""
        rows = []
        for context, continuation in pairs:
            if not context or not continuation or len(continuation) > self.max_length:
                raise ValueError(
                    f"a request needs 1+ context and 1..{self.max_length} continuation tokens, "
                    f"got {len(context)} and {len(continuation)}"
                )
            rows.append(((context + continuation)[-(self.max_length + 1) :], len(continuation)))
        out = np.zeros((len(rows), 2), np.float64)
        pending = []  # every batch is dispatched before any result is read
        for index, tokens, mask in self._batches(rows):
            pending.append((index, self._dispatch(tokens, mask)))
        for index, result in pending:
            out[index] = np.asarray(jax.device_get(result), np.float64)[: len(index)]
        return [(float(lp), bool(miss == 0)) for lp, miss in out]

    def _batches(self, rows: list[tuple[list[int], int]]):
        """(row indices, tokens [B, L+1], mask [B, L]) batches: rows sorted longest first, each
        batch within one length bucket, padded to batch_size rows (padding scores nothing)."""
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
        B, start = self.batch_size, 0
        length = lambda i: bucket_length(len(rows[i][0]) - 1, self.max_length)
        while start < len(order):
            L = length(order[start])
            index = list(
                itertools.takewhile(lambda i, L=L: length(i) == L, order[start : start + B])
            )
            tokens, mask = np.zeros((B, L + 1), np.int32), np.zeros((B, L), np.float32)
            for r, i in enumerate(index):
                window, n_cont = rows[i]
                tokens[r, : len(window)] = window
                mask[r, len(window) - 1 - n_cont : len(window) - 1] = 1.0
            yield index, tokens, mask
            start += len(index)

    def _dispatch(self, tokens: np.ndarray, mask: np.ndarray) -> jax.Array:
        """Run the scorer on a global batch; this process gives its share of the rows."""
        n, i = jax.process_count(), jax.process_index()
        share = len(tokens) // n
        local = lambda x: x[i * share : (i + 1) * share]
        sharding = self.placement.batch_sharding
        with jax.set_mesh(self.placement.mesh), nn.logical_axis_rules(list(self.placement.rules)):
            return self._score(
                self.params,
                sharding_lib.global_batch(local(tokens), sharding),
                sharding_lib.global_batch(local(mask), sharding),
            )

    def rolling(self, documents: Sequence[list[int]], windows: Callable) -> list[float]:
        """Log-likelihood of whole token sequences; `windows(tokens)` cuts one into
        (context, continuation) pairs that each predict its tokens once."""
        owners, pairs = [], []
        for owner, tokens in enumerate(documents):
            for pair in windows(tokens):
                owners.append(owner)
                pairs.append(pair)
        totals = [0.0] * len(documents)
        for owner, (logp, _) in zip(owners, self.loglikelihood(pairs), strict=True):
            totals[owner] += logp
        return totals

    def generate(
        self,
        contexts: Sequence[list[int]],
        max_gen_toks: int,
        sampling: tuple[float, int, float] = (0.0, 0, 1.0),
    ) -> list[list[int]]:
        """Up to max_gen_toks tokens after each context (cut at EOT, which is dropped), greedy
        unless sampling = (temperature, top_k, top_p) says otherwise. Contexts keep their last
        max_length - max_gen_toks tokens, so every row stays inside the context."""
        room = self.max_length - max_gen_toks
        if room < 1:
            raise ValueError(
                f"max_gen_toks={max_gen_toks} leaves no room for the prompt in max_length="
                f"{self.max_length}: lower max_gen_toks (model_args or the task's "
                "generation_kwargs)"
            )
        prompts = [(list(c) or [self.eot_id])[-room:] for c in contexts]
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        out: list[list[int]] = [[] for _ in prompts]
        temperature, top_k, top_p = sampling
        B = self.batch_size
        for start in range(0, len(order), B):
            index = order[start : start + B]
            rows = [prompts[i] for i in index]
            # Filler rows give every call the same [B + 1, bucket] shape: few compiles.
            bucket = bucket_length(len(rows[0]), room)
            rows += [[self.eot_id] * bucket] * (B + 1 - len(rows))
            drawn = generate_batch(
                self.model, self.params, rows, max_gen_toks, jax.random.key(SAMPLING_SEED),
                temperature, top_k, top_p, vocab_limit=self.tokenizer.vocab_size,
                eot_id=self.eot_id,
            )  # fmt: skip
            for i, ids in zip(index, drawn, strict=False):
                out[i] = ids[: ids.index(self.eot_id)] if self.eot_id in ids else ids
        return out


def sampling_settings(kwargs: dict[str, Any]) -> tuple[float, int, float]:
    """(temperature, top_k, top_p) from lm-eval's normalized generation kwargs (until and
    max_gen_toks already taken out); other settings are refused unless they are neutral."""
    kwargs = dict(kwargs)
    do_sample = bool(kwargs.pop("do_sample", False))
    temperature = float(kwargs.pop("temperature", 0.0) or 0.0)
    temperature = temperature if do_sample else 0.0
    top_k, top_p = int(kwargs.pop("top_k", 0) or 0), float(kwargs.pop("top_p", 1.0) or 1.0)
    for key, value in kwargs.items():
        if NEUTRAL_GEN_KWARGS.get(key) != value:
            raise ValueError(
                f"generation_kwargs {key}={value!r} is not supported by the jaxgpt model "
                "(it does greedy decoding, or do_sample with temperature, top_k, top_p)"
            )
    return temperature, top_k, top_p


def _int_or_none(value: Any) -> int | None:
    return None if value in (None, "", "None") else int(value)


def _batch_size(value: Any) -> int:
    """lm-eval's batch_size may be "auto" or "auto:N": here a fixed 32 (jit wants fixed shapes)."""
    return 32 if value is None or str(value).startswith("auto") else int(value)


class HarnessMethods:
    """lm-eval's TemplateLM interface over a ShardedLM. Use lm_class(), which puts this in
    front of TemplateLM; lm-eval constructs it from --model_args (workdir=DIR,...)."""

    tokenizer = None  # lm-eval reads a HF tokenizer here (chat templates); jaxgpt has none

    def __init__(
        self,
        workdir: str | None = None,
        batch_size: Any = 32,
        max_length: int = 0,
        max_gen_toks: int = 256,
        step: Any = None,
        pretrained: str | None = None,
        device: Any = None,
        max_batch_size: Any = None,
        *,
        backend: ShardedLM | None = None,
    ):
        """workdir: a jaxgpt training run (model_args workdir=DIR; pretrained=DIR is the same,
        and lm-eval then names its output folder after it); max_length 0 = the model's context;
        step: a checkpoint step (default: best, else latest). device and max_batch_size are
        lm-eval's generic options, unused (the run's mesh decides where the model runs).
        backend: an already placed model (training)."""
        super().__init__()
        workdir = workdir or pretrained
        if backend is None:
            if not workdir:
                raise ValueError("the jaxgpt lm-eval model needs --model_args workdir=DIR")
            backend = ShardedLM.from_workdir(
                workdir, _int_or_none(step), batch_size=_batch_size(batch_size),
                max_length=int(max_length), max_gen_toks=int(max_gen_toks),
            )  # fmt: skip
        self.backend = backend

    @property
    def eot_token_id(self) -> int:
        return self.backend.eot_id

    @property
    def max_length(self) -> int:
        return self.backend.max_length

    @property
    def max_gen_toks(self) -> int:
        return self.backend.max_gen_toks

    @property
    def batch_size(self) -> int:
        return self.backend.batch_size

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **_) -> list[int]:
        return self.backend.tokenizer.encode(string)

    def tok_decode(self, tokens: Sequence[int], **_) -> str:
        return self.backend.tokenizer.decode(list(tokens))

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **_):
        results = self.backend.loglikelihood([(c, k) for _, c, k in requests])
        for (key, _, _), result in zip(requests, results, strict=True):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        from lm_eval import utils

        def windows(tokens: list[int]) -> list[tuple[list[int], list[int]]]:
            cut = utils.get_rolling_token_windows(
                token_list=tokens, prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1,
            )  # fmt: skip
            return [utils.make_disjoint_window(w) for w in cut]

        strings = [r.args[0] for r in requests]
        totals = self.backend.rolling([self.tok_encode(s) for s in strings], windows)
        for string, total in zip(strings, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from lm_eval.models.utils import normalize_gen_kwargs, postprocess_generated_text

        groups: dict[str, list[int]] = {}  # one batch shape and one setting per group
        for i, r in enumerate(requests):
            groups.setdefault(json.dumps(r.args[1], sort_keys=True, default=str), []).append(i)
        out = [""] * len(requests)
        for index in groups.values():
            kwargs = dict(normalize_gen_kwargs(requests[index[0]].args[1], self.max_gen_toks))
            until, n_new = kwargs.pop("until"), kwargs.pop("max_gen_toks")
            contexts = [self.tok_encode(requests[i].args[0]) for i in index]
            drawn = self.backend.generate(contexts, n_new, sampling_settings(kwargs))
            for i, ids in zip(index, drawn, strict=True):
                out[i] = postprocess_generated_text(self.tok_decode(ids), until, None)
                self.cache_hook.add_partial("generate_until", requests[i].args, out[i])
        return out

    def get_model_info(self) -> dict[str, Any]:
        """What lm-eval writes into its results as the model's description."""
        b = self.backend
        return {
            "workdir": b.workdir,
            "step": b.step,
            "max_length": b.max_length,
            "block_size": b.model.config.block_size,
        }


@functools.cache
def lm_class() -> type:
    """The lm-eval model class (HarnessMethods in front of lm-eval's TemplateLM), registered
    with lm-eval as "jaxgpt" on first call."""
    try:
        # The built-in models first: lm-eval loads them only while its registry is empty, so
        # registering ours before would hide `hf`, `local-completions`, ...
        import lm_eval.models  # noqa: F401
        from lm_eval.api.model import TemplateLM
        from lm_eval.api.registry import register_model
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(MISSING) from e
    cls = type("JaxGPTLM", (HarnessMethods, TemplateLM), {"__module__": __name__})
    return register_model("jaxgpt")(cls)


def register() -> None:
    """Make `--model jaxgpt` / simple_evaluate(model="jaxgpt") known to lm-eval."""
    lm_class()


def task_manager(names: Sequence[str], include_path: str | None = None) -> Any:
    """lm-eval's TaskManager for these task names. Local tasks (include_path) are indexed alone
    (0.05 s); lm-eval's 14k built-in tasks (10 s) only when a name is not found there."""
    lm_class()
    from lm_eval.tasks import TaskManager

    manager = None
    if include_path:
        manager = TaskManager(include_path=include_path, include_defaults=False)
    if manager is None or any(n not in manager.all_tasks for n in names):
        manager = TaskManager(include_path=include_path)
    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown:
        where = f"or in {include_path}" if include_path else "(--include_path DIR for local ones)"
        raise ValueError(f"unknown lm-eval task(s) {unknown}: not among lm-eval's tasks {where}")
    return manager


def run_tasks(
    workdir: str | Path,
    tasks: Sequence[str],
    *,
    include_path: str | None = None,
    limit: float | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 32,
    max_length: int = 0,
    output_path: str | None = None,
    log_samples: bool = False,
) -> dict[str, Any]:
    """lm-eval's simple_evaluate with the jaxgpt model on a training run: its result dict
    (with "samples" when log_samples). With output_path, the files lm_eval --output_path
    writes: <output_path>/<workdir>/results_<time>.json (and samples_<task>_<time>.jsonl)."""
    register()
    import lm_eval
    from lm_eval.loggers import EvaluationTracker

    manager = task_manager(tasks, include_path)
    tracker = EvaluationTracker(output_path=str(output_path)) if output_path else None
    results = lm_eval.simple_evaluate(
        model="jaxgpt",
        model_args={"workdir": str(workdir), "max_length": max_length},
        tasks=list(tasks),
        batch_size=batch_size,
        num_fewshot=num_fewshot,
        limit=limit,
        log_samples=log_samples,
        evaluation_tracker=tracker,
        task_manager=manager,
    )
    if tracker is not None:
        _save(tracker, results, str(workdir))
    return results


def _save(tracker: Any, results: dict[str, Any], workdir: str) -> None:
    """Write results (and samples) as lm_eval's CLI does, in a folder named after the workdir
    (lm-eval names it from pretrained=, which jaxgpt's model_args do not have)."""
    from lm_eval.utils import sanitize_model_name

    config = tracker.general_config_tracker
    name = Path(workdir.rstrip("/")).name or workdir
    config.model_name, config.model_name_sanitized = workdir, sanitize_model_name(name)
    samples = results.get("samples")
    tracker.save_results_aggregated(
        results={k: v for k, v in results.items() if k != "samples"}, samples=samples
    )
    for task in results["configs"] if samples else ():
        tracker.save_results_samples(task_name=task, samples=samples[task])


def load_scoring_tasks(names: Sequence[str], include_path: str | None, what: str) -> Any:
    """Tasks loaded once, to be scored again and again (training): loglikelihood kinds only,
    set up as simple_evaluate would (0-shot unless the YAML says, lm-eval's few-shot seed).
    `what` names the setting, for the error."""
    loaded = task_manager(names, include_path).load(list(names))
    kinds = {n: t.get_config("output_type") for n, t in loaded["tasks"].items()}
    refused = sorted(n for n, kind in kinds.items() if kind not in SCORING_TYPES)
    if refused:
        raise ValueError(
            f"{what}: {refused} are not loglikelihood tasks ({', '.join(SCORING_TYPES)}); "
            "generation is too slow to run at every evaluation: run them after training "
            "with python -m jaxgpt.evaluate --tasks"
        )
    for task in loaded["tasks"].values():
        if task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=FEWSHOT_SEED)
    return loaded


def score_tasks(lm: Any, loaded: Any, limit: int | None, quiet: bool = False) -> dict[str, float]:
    """lm-eval's evaluate() over already loaded tasks, as flat task/<task>/<metric> scores
    (no bootstrap standard errors: they cost more than the scoring at small sizes)."""
    from lm_eval import evaluator

    results = evaluator.evaluate(
        lm, loaded, limit=limit, bootstrap_iters=0, log_samples=False,
        verbosity="ERROR" if quiet else "WARNING",
    )  # fmt: skip
    return task_scores(results)


def results_table(results: dict[str, Any]) -> str:
    """lm-eval's markdown table of the results (and of the groups, if any)."""
    from lm_eval.utils import make_table

    table = make_table(results)
    return table + ("\n" + make_table(results, "groups") if results.get("groups") else "")


def task_scores(results: dict[str, Any]) -> dict[str, float]:
    """lm-eval's per-task metrics as flat {"task/<task>/<metric>": value}: the ",none" filter
    suffix dropped (other filters kept as /<filter>), standard errors left out."""
    scores = {}
    for task, metrics in results.get("results", {}).items():
        for key, value in metrics.items():
            metric, _, filt = key.partition(",")
            if not filt or metric.endswith("_stderr") or not isinstance(value, int | float):
                continue
            if isinstance(value, bool) or not math.isfinite(value):
                continue
            name = metric if filt == "none" else f"{metric}/{filt}"
            scores[f"task/{task}/{name}"] = float(value)
    return scores


def cli() -> None:
    """lm-eval's own command line with `--model jaxgpt` known: lm-eval 0.4 finds models only
    in its registry (no plugin entry points), so this registers ours, then hands over.
    `python -m jaxgpt.lm_eval_model --model jaxgpt --model_args workdir=DIR --tasks ...`."""
    register()
    host_memory.keep_freed_memory()  # a command, like jaxgpt.evaluate: the process is ours
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    cli()
