"""Build a run from a config: runtime, data, mesh, model, trainer, checkpointer, first state.

`build_trainer` is shared by train and bench; `batch_split_problem` by train, bench and plan.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxgpt import config as config_lib
from jaxgpt import cpu_devices, distributed, host_memory, storage
from jaxgpt import init_from as init_from_lib
from jaxgpt import metrics as metrics_lib
from jaxgpt import sharding as sharding_lib
from jaxgpt.checkpoint import Checkpointer
from jaxgpt.config import AnyPath, RunConfig, TrainConfig
from jaxgpt.data import sft
from jaxgpt.data.build import prepare_dataset
from jaxgpt.data.dataset import DatasetInfo, load_dataset
from jaxgpt.data.pipeline import TrainBatches, eval_windows
from jaxgpt.model import GPT, GPTConfig, count_params
from jaxgpt.optimizer import make_optimizer, make_schedule
from jaxgpt.run.evaluation import local_rows
from jaxgpt.state import Trainer, TrainState, make_trainer


def start_runtime(rc: RunConfig, batch_sizes: tuple[int, ...]) -> str | None:
    """Host memory policy, the CPU device split and the multi-process runtime, before anything
    asks JAX about devices; returns the CPU split's note (or None)."""
    host_memory.keep_freed_memory()
    note = None
    if distributed.init_arguments(rc.dist) is None:  # one process: may split the CPU host
        note = cpu_devices.configure(rc.mesh.cpu_devices, rc.mesh, batch_sizes)
    distributed.initialize(rc.dist)
    return note if jax.default_backend() == "cpu" else None


def eval_batch_size(train: TrainConfig) -> int:
    return train.eval_batch_size or train.micro_batch_size


def batch_split_problem(train: TrainConfig, n_batch: int, eval_batch: int) -> str | None:
    """Why the batches cannot be split over `n_batch` data-parallel devices, or None."""
    micro = train.micro_batch_size
    if micro % n_batch == 0 and eval_batch % n_batch == 0:
        return None
    return (
        f"train.batch_size={train.batch_size} over train.microbatches={train.microbatches} "
        f"gives {micro} sequences per microbatch and the eval batch is {eval_batch}: a batch "
        f"not divisible by the data-parallel size {n_batch} (mesh data × fsdp) cannot be "
        "split; change train.batch_size (or train.eval_batch_size) or the mesh"
    )


def build_trainer(rc: RunConfig, model_cfg: GPTConfig, steps: int, eval_batch: int) -> Trainer:
    """Mesh, model, schedule and optimizer, and the jitted sharded step functions."""
    mesh = sharding_lib.make_mesh(rc.mesh)
    n_batch = sharding_lib.batch_axis_size(mesh, rc.mesh.rules)
    if problem := batch_split_problem(rc.train, n_batch, eval_batch):
        raise ValueError(problem)
    schedule = make_schedule(rc.opt, steps)
    tx = make_optimizer(rc.opt, steps)
    return make_trainer(GPT(model_cfg), tx, schedule, mesh, rc.mesh.rules, rc.train.microbatches)


def steps_for(train: TrainConfig, windows_per_epoch: int) -> int:
    """train.steps, or with train.epochs the steps that many passes over the data take."""
    if not train.epochs:
        return train.steps
    return max(1, math.ceil(train.epochs * windows_per_epoch / train.batch_size))


@dataclasses.dataclass
class TrainingRun:
    """Everything the training loop works with, built by `setup_training`."""

    rc: RunConfig
    workdir: AnyPath
    say: Callable[..., None]
    data: DatasetInfo
    trainer: Trainer
    ckpt: Checkpointer
    state: TrainState
    start: int  # the step the state is at
    steps: int  # the step the run ends at (train.steps, or derived from train.epochs)
    batches: TrainBatches
    val_local: np.ndarray  # this process's rows of the fixed validation batches
    from_weights: bool  # started now from init_from weights (not resumed)
    # The last step metrics.jsonl had before this session dropped the lines past its start
    # (trackers that cannot rewind, W&B, skip the redone steps up to it).
    logged_through: int = 0

    @property
    def is_main(self) -> bool:
        return jax.process_index() == 0

    @property
    def tokens_per_step(self) -> int:
        return self.rc.train.batch_size * self.trainer.model.config.block_size

    def to_global(self, local_batch: np.ndarray) -> jax.Array:
        return sharding_lib.global_batch(local_batch, self.trainer.batch_sharding)


def setup_training(config: ml_collections.ConfigDict, workdir: str | AnyPath) -> TrainingRun:
    """Prepare data if needed, build the trainer, and init, import or resume the state."""
    source, notes = None, []
    if config.init_from:
        # The weights decide the model's shape and tokenizer: fold them into (a copy of) the
        # config first, so config.json, the data dir and every check see the real model.
        config = config.copy_and_resolve_references()
        source = init_from_lib.resolve(config.init_from)
        notes = init_from_lib.apply_to_config(config, source)
    rc = config_lib.run_config(config)
    workdir = config_lib.location(workdir, "workdir")
    storage.check_writable(workdir)  # a bucket's problems stop the run before any compile
    cpu_note = start_runtime(rc, (rc.train.micro_batch_size, eval_batch_size(rc.train)))
    if not config_lib.is_remote(workdir):
        workdir.mkdir(parents=True, exist_ok=True)
    say = print if jax.process_index() == 0 else (lambda *a, **k: None)
    if cpu_note:
        say(cpu_note)
    distributed.check_same_everywhere("config", config_lib.to_json(config))
    data = _prepare_data(rc, workdir)
    model_cfg = config_lib.model_config(rc.model, data.vocab_size, data.eot_id)
    batches, val = _batches(rc, data, model_cfg.block_size, say)
    steps = steps_for(rc.train, batches.n_windows)
    if rc.train.epochs:
        say(f"train.epochs={rc.train.epochs}: {steps:,} steps of {rc.train.batch_size} sequences")
    trainer = build_trainer(rc, model_cfg, steps, eval_batch_size(rc.train))
    if jax.process_index() == 0:
        _write_workdir_files(workdir, config, model_cfg, data)
    ckpt = Checkpointer(workdir, rc.ckpt.every, rc.ckpt.keep, rc.ckpt.async_save)
    logged_through = max((r.get("step", 0) for r in metrics_lib.read_metrics(workdir)), default=0)
    state, start = _first_state(rc, workdir, trainer, ckpt, (source, notes), say)
    val_local = np.stack([local_rows(b) for b in val])
    from_weights = source is not None and start == 0
    run = TrainingRun(
        rc,
        workdir,
        say,
        data,
        trainer,
        ckpt,
        state,
        start,
        steps,
        batches,
        val_local,
        from_weights,
        logged_through,
    )
    say(_model_line(trainer, state))
    return run


def _prepare_data(rc: RunConfig, workdir: AnyPath) -> DatasetInfo:
    """Process 0 builds the data dir; the others then find it current (shared storage) or
    build the identical one (local storage): building is deterministic. A data dir in a bucket
    is only read by the others: they need neither the sources nor a build of their own."""
    data_dir = rc.data.path or workdir / "data"
    if jax.process_index() == 0:
        data = prepare_dataset(rc.data, data_dir)
    distributed.barrier("data prepared")
    if jax.process_index() != 0:
        if config_lib.is_remote(data_dir):
            data = load_dataset(data_dir)
        else:
            data = prepare_dataset(rc.data, data_dir, verbose=False)
    return data


def _batches(rc: RunConfig, data: DatasetInfo, seq_len: int, say) -> tuple[TrainBatches, Any]:
    """Training batches and fixed validation batches: token windows, or SFT examples."""
    where = (jax.process_index(), jax.process_count())
    eval_batch = eval_batch_size(rc.train)
    if data.format == "sft":
        examples = sft.load_examples(data, "train")
        too_long = int(np.sum(examples.lengths() > seq_len + 1))
        if too_long:
            say(
                f"sft: {too_long:,} of {len(examples):,} training examples are longer than "
                f"block_size+1 = {seq_len + 1} tokens and lose the start of their prompt"
            )
        batches = sft.SFTBatches(
            examples, data.eot_id, rc.train.batch_size, seq_len, rc.train.seed, *where
        )
        val_examples = sft.load_examples(data, "val")
        val = sft.eval_rows(val_examples, data.eot_id, seq_len, rc.train.eval_tokens, eval_batch)
        return batches, val
    batches = TrainBatches(
        data.tokens("train"), rc.train.batch_size, seq_len, rc.train.seed, *where
    )
    return batches, eval_windows(data.tokens("val"), seq_len, rc.train.eval_tokens, eval_batch)


def _write_workdir_files(workdir: AnyPath, config, model_cfg: GPTConfig, data: DatasetInfo):
    resolved = json.loads(config_lib.to_json(config))
    resolved["model"]["vocab_size"] = model_cfg.vocab_size
    resolved["model"]["eot_id"] = model_cfg.eot_id  # doc_mask reads it wherever the run loads
    (workdir / "config.json").write_text(json.dumps(resolved, indent=2, sort_keys=True))
    (workdir / data.tokenizer_file).write_bytes(data.tokenizer_path.read_bytes())


def _first_state(rc, workdir: AnyPath, trainer: Trainer, ckpt: Checkpointer, init, say):
    """(state, step): the latest checkpoint, else init_from's weights, else a random init."""
    source, notes = init
    restored = ckpt.restore_latest(trainer.abstract_state(), say)
    if jax.process_index() == 0:
        # Steps past the one this run starts from are redone: drop their lines (all of them
        # when starting over, e.g. after a kill before the first checkpoint).
        metrics_lib.truncate_metrics(workdir, 0 if restored is None else restored[1])
    if restored is not None:
        say(f"resumed from {ckpt.directory / str(restored[1])}")
        return restored
    if source is None:
        return trainer.init(jax.random.fold_in(jax.random.key(rc.train.seed), 0)), 0
    for note in notes:
        say(f"init_from: {note}")
    params = init_from_lib.load_params(source, trainer.model.config)
    init_from_lib.check_shapes(params, trainer.state_shapes.params, source)
    state = init_from_lib.initial_state(trainer, trainer.tx, params)
    say(f"initialized from {source.spec}")
    return state, 0


def _model_line(trainer: Trainer, state: TrainState) -> str:
    c, mesh = trainer.model.config, trainer.mesh
    return (
        f"model: {count_params(state.params):,} params ({c.n_layer} layers, {c.n_head} heads, "
        f"width {c.n_embd}, context {c.block_size}, vocab {c.vocab_size}); mesh "
        f"{dict(mesh.shape)} on {jax.device_count()} {jax.devices()[0].platform} device(s)"
    )
