"""A whole run's settings: optimizer, loop, mesh, processes, checkpoints, and RunConfig itself."""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxgpt.config.data import DataConfig
from jaxgpt.config.locations import check_location
from jaxgpt.config.model import GPTConfig

OPTIMIZERS = ("adamw", "adam", "adabelief", "muon")
SCHEDULES = ("cosine", "linear", "constant", "wsd")
WANDB_MODES = ("", "online", "offline", "disabled")  # "": WANDB_MODE, else online
Rules = tuple[tuple[str, Any], ...]  # (logical axis name, mesh axis | None | tuple of axes)
DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("kv", None),
    ("qkv", None),
    ("norm", None),
    ("pos", None),
    ("layers", None),
    ("act_seq", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)


@dataclasses.dataclass(frozen=True)
class OptConfig:
    """Optimizer settings; see configs/base.py for the meaning of each field."""

    name: str = "adamw"
    lr: float = 6e-4
    min_lr: float = 6e-5
    schedule: str = "cosine"
    warmup_steps: int = 2000
    decay_steps: int = 0
    wsd_decay_fraction: float = 0.2
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    decay_embeddings: bool = False
    grad_clip: float = 1.0
    # name="muon": Muon for the kernels inside transformer blocks, AdamW (the keys above) for
    # embeddings, the output layer, norms and biases.
    muon_lr: float = 0.02  # peak learning rate of the Muon branch (same schedule shape)
    muon_momentum: float = 0.95  # Nesterov momentum of the Muon branch
    muon_ns_steps: int = 5  # Newton-Schulz iterations that orthogonalize each update
    muon_weight_decay: float = 0.0  # decoupled weight decay of the Muon branch

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise ValueError(f"opt.name={self.name!r} is not one of {OPTIMIZERS}")
        if self.lr <= 0 or self.muon_lr <= 0:
            raise ValueError(
                f"opt.lr ({self.lr}) and opt.muon_lr ({self.muon_lr}) must be positive "
                "(the schedules decay from them to min_lr)"
            )
        if not 0.0 <= self.muon_momentum < 1.0:
            raise ValueError(f"opt.muon_momentum must be in [0, 1), got {self.muon_momentum}")
        if self.muon_ns_steps < 1:
            raise ValueError(f"opt.muon_ns_steps must be >= 1, got {self.muon_ns_steps}")
        if self.muon_weight_decay < 0:
            raise ValueError(f"opt.muon_weight_decay must be >= 0, got {self.muon_weight_decay}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"opt.schedule={self.schedule!r} is not one of {SCHEDULES}")
        if self.warmup_steps < 0 or self.decay_steps < 0:
            raise ValueError("opt.warmup_steps and opt.decay_steps must be >= 0")
        if not 0.0 <= self.wsd_decay_fraction <= 1.0:
            raise ValueError(
                f"opt.wsd_decay_fraction must be in [0, 1], got {self.wsd_decay_fraction}"
            )


@dataclasses.dataclass(frozen=True)
class WandbConfig:
    """Weights & Biases tracking (jaxgpt/tracking.py); off while project is ""."""

    project: str = ""
    entity: str = ""
    name: str = ""
    tags: tuple[str, ...] = ()
    mode: str = ""

    def __post_init__(self):
        if self.mode not in WANDB_MODES:
            raise ValueError(
                f'train.wandb.mode must be "online", "offline", "disabled" or "" (WANDB_MODE, '
                f"else online), got {self.mode!r}"
            )
        if isinstance(self.tags, str) or not all(isinstance(t, str) for t in self.tags):
            raise ValueError(
                f"train.wandb.tags must be a tuple of strings, e.g. ('baseline', 'v2'), "
                f"got {self.tags!r}"
            )

    @property
    def enabled(self) -> bool:
        return bool(self.project)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Loop settings; see configs/base.py for the meaning of each field."""

    steps: int = 600_000
    epochs: int = 0  # > 0: passes over the training data; the run derives steps from the data
    batch_size: int = 480
    microbatches: int = 1
    seed: int = 0
    log_every: int = 10
    eval_every: int = 1000
    eval_tokens: int = 1_048_576
    eval_batch_size: int = 0
    sample_tokens: int = 64
    sample_prompt: str = ""
    peak_flops: float = 0.0
    early_stop_patience: int = 0
    on_nonfinite: str = "stop"  # "stop" | "skip": what a step with a NaN/inf loss or gradient does
    max_skipped: int = 10
    # lm-evaluation-harness tasks scored at each evaluation ("" = none; the [eval] extra).
    eval_tasks: str = ""  # comma-separated task names, e.g. "toy_mc,hellaswag"
    eval_tasks_path: str = ""  # a local folder of task YAMLs (lm-eval's --include_path)
    eval_tasks_limit: int = 0  # documents per task at each evaluation; 0 = all
    wandb: WandbConfig = dataclasses.field(default_factory=WandbConfig)

    def __post_init__(self):
        if self.on_nonfinite not in ("stop", "skip"):
            raise ValueError(
                f'train.on_nonfinite must be "stop" or "skip", got {self.on_nonfinite!r}'
            )
        check_location(self.eval_tasks_path, "train.eval_tasks_path", remote_ok=False)
        for key in ("epochs", "early_stop_patience", "eval_tasks_limit"):
            if getattr(self, key) < 0:
                raise ValueError(f"train.{key} must be >= 0, got {getattr(self, key)}")
        for key in (
            "steps",
            "batch_size",
            "microbatches",
            "log_every",
            "eval_tokens",
            "max_skipped",
        ):
            if getattr(self, key) <= 0:
                raise ValueError(f"train.{key} must be positive, got {getattr(self, key)}")
        if self.batch_size % self.microbatches:
            raise ValueError(
                f"train.batch_size={self.batch_size} is not divisible by "
                f"train.microbatches={self.microbatches}"
            )

    @property
    def micro_batch_size(self) -> int:
        return self.batch_size // self.microbatches


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh axis sizes (-1 = fill with the devices left) and logical-axis rules."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    rules: Rules = DEFAULT_RULES
    cpu_devices: int = 0  # CPU backend only: see jaxgpt/cpu_devices.py


@dataclasses.dataclass(frozen=True)
class DistConfig:
    """Multi-process settings; see configs/base.py for the meaning of each field."""

    enabled: bool = True
    coordinator: str = ""
    num_processes: int = 0
    process_id: int = -1
    initialization_timeout_s: int = 300
    heartbeat_timeout_s: int = 100


@dataclasses.dataclass(frozen=True)
class CkptConfig:
    every: int = 1000
    keep: int = 3
    async_save: bool = True
    keep_best: bool = False


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A whole run; `model.vocab_size` may still be 0 (see jaxgpt.config.model.resolve_vocab)."""

    model: GPTConfig = dataclasses.field(default_factory=GPTConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    opt: OptConfig = dataclasses.field(default_factory=OptConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    dist: DistConfig = dataclasses.field(default_factory=DistConfig)
    ckpt: CkptConfig = dataclasses.field(default_factory=CkptConfig)
    init_from: str = ""
