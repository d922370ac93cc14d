"""Optional Weights & Biases tracking of a training run (train.wandb; off while project is "").

Process 0 opens one W&B run and logs what the run writes elsewhere: the resolved config
(config.json), the finite scalars of every metrics.jsonl line at its step (as TensorBoard gets
them), the eval samples as a table, and at the end the loss plot and the summary.json fields.

The W&B run id is kept in WORKDIR/wandb.json, so a resumed training run continues the same W&B
run. A resumed run redoes the steps after its checkpoint; the killed session had already logged
some of them, with the same values, and W&B drops a step below its current one: those steps
(up to `logged_through`) are skipped, so each step is logged once.

wandb is imported inside the functions here, only when tracking is on: it is an optional extra
(`pip install 'jaxgpt[wandb]'`) and slow to import.
"""

from __future__ import annotations

import importlib.util
import io
import json
import math
import re
import secrets
import string
import tempfile
from pathlib import Path
from typing import Any

from jaxgpt.config import WandbConfig

ID_FILE = "wandb.json"
INSTALL = "pip install 'jaxgpt[wandb]'"
SAMPLE_COLUMNS = ["step", "sample"]
ID_CHARS = string.ascii_lowercase + string.digits  # W&B's own ids look like this


class TrackingError(ValueError):
    """W&B tracking was asked for (train.wandb.project) and cannot start; says what to do."""


def check_available(cfg: WandbConfig) -> None:
    """Fail before any compute when tracking is on and the wandb package is missing."""
    if cfg.enabled and importlib.util.find_spec("wandb") is None:
        raise TrackingError(
            f"train.wandb.project={cfg.project!r} needs the wandb package: {INSTALL} "
            "(or leave train.wandb.project empty to train without W&B)"
        )


def local_dir(workdir: Any) -> Path:
    """Where W&B writes its files (offline runs, media, logs): the workdir itself, or for a
    bucket workdir (gs://, s3://) a folder under the temp dir named after it, since W&B writes
    to local files only."""
    text = str(workdir)
    if "://" not in text:
        return Path(text)
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")
    return Path(tempfile.gettempdir()) / "jaxgpt-wandb" / name


def run_id(workdir: Any) -> str:
    """The W&B run id of this workdir: read from WORKDIR/wandb.json, or made and written there
    once. `workdir` is a pathlib or an etils.epath path (a bucket)."""
    path = workdir / ID_FILE
    if path.exists():
        try:
            found = json.loads(path.read_text())["id"]
        except (ValueError, KeyError, TypeError) as e:
            raise TrackingError(
                f'{path} is not {{"id": "<W&B run id>"}} ({e}); fix it to continue that W&B '
                "run, or delete it to start a new one"
            ) from None
        if not isinstance(found, str) or not found:
            raise TrackingError(f"{path}: the W&B run id must be a non-empty string: {found!r}")
        return found
    made = "".join(secrets.choice(ID_CHARS) for _ in range(8))
    path.write_text(json.dumps({"id": made}) + "\n")
    return made


def scalars(values: dict[str, Any]) -> dict[str, float | int]:
    """The values of a metrics.jsonl line that are finite numbers (what TensorBoard gets)."""
    out = {}
    for key, value in values.items():
        if hasattr(value, "item"):  # numpy and JAX scalars
            value = value.item()
        if isinstance(value, int | float) and math.isfinite(value):
            out[key] = value
    return out


class WandbSink:
    """One W&B run fed by the training loop on process 0: write, log_sample, finish/abandon."""

    def __init__(self, wb_run: Any, wandb: Any, logged_through: int):
        self.run, self._wandb = wb_run, wandb
        self._skip_through = logged_through
        self._samples: list[list[Any]] = []

    @classmethod
    def open(cls, cfg: WandbConfig, workdir: Any, logged_through: int) -> WandbSink:
        """Start or resume the workdir's W&B run; its config is WORKDIR/config.json (written by
        the run's setup). logged_through: the last step metrics.jsonl held before this session
        dropped the steps it redoes (0 in a new workdir); steps up to it are already in W&B."""
        check_available(cfg)
        import wandb

        directory = local_dir(workdir)
        directory.mkdir(parents=True, exist_ok=True)
        config = json.loads((workdir / "config.json").read_text())
        wb_id = run_id(workdir)
        try:
            wb_run = wandb.init(
                id=wb_id,
                resume="allow",
                project=cfg.project,
                entity=cfg.entity or None,
                name=cfg.name or None,
                tags=list(cfg.tags) or None,
                mode=cfg.mode or None,
                config=config,
                dir=str(directory),
            )
        except (wandb.Error, OSError) as e:
            raise TrackingError(
                f"train.wandb: could not start the W&B run ({e}). Log in (`wandb login` or "
                "WANDB_API_KEY), or set train.wandb.mode=offline to log to WORKDIR/wandb and "
                "upload later with `wandb sync`"
            ) from e
        return cls(wb_run, wandb, logged_through)

    def write(self, step: int, values: dict[str, Any]) -> None:
        """The scalars of one metrics.jsonl line; lines of one step merge into one W&B row."""
        if step <= self._skip_through:  # logged by the session this run resumes
            return
        if found := scalars(values):
            self.run.log(found, step=step)

    def log_sample(self, step: int, text: str) -> None:
        """An eval sample: the table of this session's samples so far, logged again."""
        if step <= self._skip_through:
            return
        self._samples.append([step, text])
        table = self._wandb.Table(columns=SAMPLE_COLUMNS, data=[list(r) for r in self._samples])
        self.run.log({"samples": table}, step=step)

    def finish(self, plot: Any, summary: dict[str, Any]) -> None:
        """The loss plot (a local or bucket path, or None) and the summary; ends the run."""
        try:
            if plot is not None:
                # Read as bytes: the plot may sit in a bucket, where W&B cannot open it.
                from PIL import Image

                image = Image.open(io.BytesIO(plot.read_bytes()))
                self.run.log({"loss_plot": self._wandb.Image(image)})
            self.run.summary.update(summary)
        finally:
            self.run.finish()

    def abandon(self) -> None:
        """End the run as failed (the training loop raised)."""
        self.run.finish(exit_code=1)
