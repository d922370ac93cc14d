"""Training metrics: MFU, metrics.jsonl, TensorBoard scalars and the loss-curve plot."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import jax
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

from jaxgpt import storage
from jaxgpt.config import AnyPath, absolute, is_remote, location

MFU_FORMULA = "MFU = (6·N + 12·L·H·Q·T) · tokens/s / (devices · peak FLOP/s), N without wpe"

# Dense bf16 peak FLOP/s per device, by jax's device_kind (substring match, first hit wins).
PEAK_FLOPS = (
    ("H200", 989e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("TPU v5p", 459e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12),
    ("TPU v4", 275e12),
    ("TPU v6", 918e12),
)


def peak_flops_for_kind(kind: str) -> float | None:
    """Peak FLOP/s of one device of this kind (substring match), or None where unknown."""
    for name, peak in PEAK_FLOPS:
        if name.lower() in kind.lower():
            return peak
    return None


def peak_flops_per_device(device: jax.Device | None = None, override: float = 0.0) -> float | None:
    """Peak FLOP/s of one device, or None where unknown (CPUs): MFU is then reported as null."""
    if override > 0:
        return override
    return peak_flops_for_kind((device or jax.devices()[0]).device_kind)


def mfu(flops_per_token: float, tokens_per_s: float, n_devices: int, peak: float | None):
    if peak is None:
        return None
    return flops_per_token * tokens_per_s / (n_devices * peak)


class EventFile:
    """A TensorBoard event file (a TFRecord stream of Event protos), written in the caller's
    thread. tensorboard's EventFileWriter would import TensorFlow when it is installed (4.3 s and
    about 0.5 GB per process here) and run a writer thread beside the train step."""

    def __init__(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{time.time():.0f}.{socket.gethostname()}.{os.getpid()}"
        self.path = directory / name
        self._records = RecordWriter(self.path.open("wb"))
        self.add(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def add(self, event: event_pb2.Event) -> None:
        self._records.write(event.SerializeToString())
        self._records.flush()

    def close(self) -> None:
        self._records.close()


class MetricsWriter:
    """Appends one JSON object per line to metrics.jsonl and mirrors scalars to TensorBoard.

    Object stores cannot append: for a workdir in a bucket both files are written in a local
    folder that stands in for it and uploaded whole (each upload replaces the object at once) by
    sync(), which runs before every checkpoint, every SYNC_EVERY_S seconds and at close."""

    SYNC_EVERY_S = 30.0

    def __init__(self, workdir: str | AnyPath, enabled: bool = True, start_step: int = 0):
        """start_step: the step the run resumes from; TensorBoard drops what earlier runs
        logged past it (those steps are redone), as truncate_metrics does for metrics.jsonl."""
        self.enabled = enabled
        self.remote = location(workdir, "workdir") if is_remote(workdir) else None
        local = Path(workdir) if self.remote is None else storage.local_stand_in(workdir, "runs")
        self.path = local / "metrics.jsonl"
        self._tb = None
        self._synced_at = time.monotonic()
        if enabled:
            if self.remote is not None:  # continue from the (already truncated) bucket copy
                remote_metrics = self.remote / "metrics.jsonl"
                self.path.write_bytes(
                    remote_metrics.read_bytes() if remote_metrics.is_file() else b""
                )
                shutil.rmtree(local / "tensorboard", ignore_errors=True)  # earlier sessions'
            self._tb = EventFile(local / "tensorboard")
            # A SessionLog START at step s makes TensorBoard purge older events of step >= s.
            start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
            self._tb.add(
                event_pb2.Event(wall_time=time.time(), step=start_step + 1, session_log=start)
            )
            self._file = self.path.open("a")

    def write(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _plain(v) for k, v in values.items()}}
        try:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        except OSError as e:  # a full disk: say what is safe and what to do
            raise OSError(
                e.errno,
                f"writing {self.path} failed ({e.strerror}); the checkpoints are intact: free "
                "space or fix the storage, then rerun the same command to resume",
            ) from e
        scalars = [
            summary_pb2.Summary.Value(tag=k, simple_value=v)
            for k, v in record.items()
            if k != "step" and isinstance(v, int | float) and math.isfinite(v)
        ]
        self._tb.add(
            event_pb2.Event(
                wall_time=time.time(), step=step, summary=summary_pb2.Summary(value=scalars)
            )
        )
        if self.remote is not None and time.monotonic() - self._synced_at > self.SYNC_EVERY_S:
            self.sync()

    def sync(self) -> None:
        """Upload metrics.jsonl and this session's event file (bucket workdirs only)."""
        if not self.enabled or self.remote is None:
            return
        storage.upload_file(self.path, self.remote / "metrics.jsonl")
        events = self._tb.path
        storage.upload_file(events, self.remote / "tensorboard" / events.name)
        self._synced_at = time.monotonic()

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            self._tb.close()
            self.sync()


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else value
    return value


def read_metrics(workdir: str | AnyPath) -> list[dict]:
    """The records of metrics.jsonl; a line a kill cut short (not JSON) is left out."""
    path = location(workdir, "workdir") / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def truncate_metrics(workdir: str | AnyPath, last_step: int) -> None:
    """Keep only the lines of steps <= last_step (and drop torn ones), replacing the file
    atomically: a run resumed from last_step writes the later steps again, exactly once."""
    path = location(workdir, "workdir") / "metrics.jsonl"
    if not path.is_file():
        return
    keep = [r for r in read_metrics(workdir) if r.get("step", 0) <= last_step]
    if is_remote(path):  # one PUT replaces the object whole
        path.write_text("".join(json.dumps(r) + "\n" for r in keep))
        return
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in keep))
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def plot_losses(workdir: str | AnyPath) -> AnyPath | None:
    """Write WORKDIR/loss.png: training loss and validation loss against step."""
    records = read_metrics(workdir)
    train = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None]
    val = [(r["step"], r["eval_loss"]) for r in records if r.get("eval_loss") is not None]
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", linewidth=1)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(absolute(location(workdir, "workdir")).name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = location(workdir, "workdir") / "loss.png"
    image = io.BytesIO()
    fig.savefig(image, format="png")
    out.write_bytes(image.getvalue())
    plt.close(fig)
    return out
