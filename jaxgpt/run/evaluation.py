"""The one evaluation loop (sharded, exact mean over weighted targets), and what the training
loop does at each evaluation: validation loss, lm-eval task scores (train.eval_tasks), a
sample, best params, early stopping."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from jaxgpt import lm_eval_model
from jaxgpt import sharding as sharding_lib
from jaxgpt.checkpoint import BestCheckpoint
from jaxgpt.config import TrainConfig
from jaxgpt.decode.generate import generate
from jaxgpt.metrics import MetricsWriter
from jaxgpt.state import Trainer
from jaxgpt.tracking import WandbSink

# A row of this value in every position is padding: negative tokens are never targets
# (state.split_targets), so it adds nothing to the loss sum or the target count.
PAD_TOKEN = -1


def local_rows(batch: np.ndarray) -> np.ndarray:
    """This process's share of the rows of a global batch."""
    n = jax.process_count()
    rows = len(batch) // n
    return batch[jax.process_index() * rows : (jax.process_index() + 1) * rows]


def batch_windows(windows_NT1: np.ndarray, batch_size: int) -> np.ndarray:
    """Windows [N, T+1] as batches [K, batch_size, T+1]; the last is padded with PAD_TOKEN rows."""
    pad = -len(windows_NT1) % batch_size
    if pad:
        filler = np.full((pad, windows_NT1.shape[1]), PAD_TOKEN, windows_NT1.dtype)
        windows_NT1 = np.concatenate([windows_NT1, filler])
    return windows_NT1.reshape(-1, batch_size, windows_NT1.shape[1])


def loss_sums(eval_fn: Callable, params: Any, batches: Any, batch_sharding) -> tuple[float, float]:
    """(summed loss, number of targets) over batches of this process's rows [B_local, T+1]:
    every batch is dispatched before any result is read, so the device never waits."""
    sums = [eval_fn(params, sharding_lib.global_batch(b, batch_sharding)) for b in batches]
    if not sums:
        raise ValueError("nothing to evaluate: no batches")
    loss_sum, count = np.sum(np.asarray(jax.device_get(sums), np.float64), axis=0)
    return float(loss_sum), float(count)


def mean_loss(trainer: Trainer, params: Any, batches_local: Any) -> float:
    """Mean loss per target over fixed batches of this process's rows."""
    loss_sum, count = loss_sums(trainer.eval, params, batches_local, trainer.batch_sharding)
    return loss_sum / max(count, 1.0)


def perplexity(loss: float) -> float:
    return float(math.exp(min(loss, 50.0)))


class TaskEvals:
    """lm-evaluation-harness tasks (train.eval_tasks) scored with the params being trained, on
    the trainer's mesh (no second copy of the params). Every process runs every batch (the
    forward passes are collective); lm-eval runs in each process over the same requests."""

    def __init__(self, trainer: Trainer, tokenizer: Any, cfg: TrainConfig, batch_size: int):
        """Loads the tasks now, so a missing extra, an unknown task or a generation task fails
        before the first step."""
        names = [n.strip() for n in cfg.eval_tasks.split(",") if n.strip()]
        self.tasks = lm_eval_model.load_scoring_tasks(
            names, cfg.eval_tasks_path or None, f"train.eval_tasks={cfg.eval_tasks!r}"
        )
        placement = lm_eval_model.Placement(
            trainer.mesh, trainer.rules, trainer.state_shardings.params, trainer.batch_sharding
        )
        self.backend = lm_eval_model.ShardedLM(
            trainer.model, None, tokenizer, placement, batch_size=batch_size
        )
        self.lm = lm_eval_model.lm_class()(backend=self.backend)
        self.limit = cfg.eval_tasks_limit or None

    def __call__(self, params: Any) -> dict[str, float]:
        """{"task/<task>/<metric>": value} for these params."""
        self.backend.params = params
        quiet = jax.process_index() != 0
        return lm_eval_model.score_tasks(self.lm, self.tasks, self.limit, quiet)


def task_report(scores: dict[str, float]) -> str:
    """One line per task: `toy_mc: acc 0.6000, acc_norm 0.4000`."""
    by_task: dict[str, list[str]] = {}
    for key, value in scores.items():
        _, task, metric = key.split("/", 2)
        by_task.setdefault(task, []).append(f"{metric} {value:.4f}")
    return "".join(f"\n  {task}: {', '.join(m)}" for task, m in by_task.items())


class TrainingEval:
    """What the training loop does at an evaluation, and the early-stopping rule."""

    def __init__(
        self,
        trainer: Trainer,
        val_local: np.ndarray,
        train_cfg: TrainConfig,
        best: BestCheckpoint | None,
        writer: MetricsWriter,
        tokenizer: Any,
        rng: jax.Array,
        sink: WandbSink | None = None,
        tasks: TaskEvals | None = None,
    ):
        """sink: W&B tracking (process 0 with train.wandb on), fed the eval lines and samples.
        tasks: lm-eval task scores logged with each eval line (train.eval_tasks)."""
        self.trainer, self.val_local, self.cfg = trainer, val_local, train_cfg
        self.best, self.writer, self.tokenizer, self.rng = best, writer, tokenizer, rng
        self.sink, self.tasks = sink, tasks

    def loss(self, params: Any) -> tuple[float, float]:
        """(validation loss, perplexity), nothing written."""
        loss = mean_loss(self.trainer, params, self.val_local)
        return loss, perplexity(loss)

    def __call__(self, step: int, params: Any) -> tuple[float, float, str]:
        """Evaluate, write the eval line, sample, update the best params; (loss, ppl, report)."""
        loss, ppl = self.loss(params)
        scores = self.tasks(params) if self.tasks is not None else {}
        line = {"eval_loss": loss, "eval_ppl": ppl, **scores}
        self.writer.write(step, line)
        if self.sink is not None:
            self.sink.write(step, line)
        report = f"step {step}: val loss {loss:.4f}, perplexity {ppl:.2f}" + task_report(scores)
        if self.cfg.sample_tokens:  # every process: the params are spread over all of them
            text = self.sample(step, params)
            report += f"\n  sample: {text!r}"
            if self.sink is not None:
                self.sink.log_sample(step, text)
        if self.best is not None and self.best.update(step, loss, params) and self.best.keep:
            report += f"\n  new best: saved params to {self.best.directory}"
        return loss, ppl, report

    def sample(self, step: int, params: Any) -> str:
        prompt_text = self.cfg.sample_prompt
        prompt = self.tokenizer.encode(prompt_text) if prompt_text else []
        ids = generate(
            self.trainer.model,
            params,
            prompt or [self.tokenizer.eot_id],
            self.cfg.sample_tokens,
            jax.random.fold_in(self.rng, 2 + step),
            temperature=0.8,
            top_k=50,
            vocab_limit=self.tokenizer.vocab_size,
        )
        return prompt_text + self.tokenizer.decode(ids)

    def out_of_patience(self) -> bool:
        """Early stopping: `early_stop_patience` evaluations in a row without a new best."""
        patience = self.cfg.early_stop_patience
        return bool(patience and self.best is not None and self.best.evals_since_best >= patience)
