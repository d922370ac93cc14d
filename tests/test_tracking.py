"""W&B tracking (jaxgpt/tracking.py): off by default, a clear error without the package, the
config and metrics.jsonl scalars logged, and a resumed run continuing the same W&B run with
each step logged once. W&B runs offline here (no account, no network), read back from the
run-ID.wandb files by tests/wandb_records.py."""

from __future__ import annotations

import json
import math
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from jaxgpt import metrics as metrics_lib
from jaxgpt import tracking
from jaxgpt.config import apply_override, from_dict, run_config, to_json
from jaxgpt.config.run import RunConfig, WandbConfig
from jaxgpt.run.loop import train
from tests.helpers import tiny_config
from tests.wandb_records import OfflineRun, offline_runs

TIMINGS = {"step_time_s", "tokens_per_s", "input_wait_frac", "mfu"}  # differ run to run


@pytest.fixture
def offline_wandb(monkeypatch, tmp_path):
    """W&B offline and quiet, its settings and caches under tmp_path; the wandb-core service
    process it starts is stopped afterwards."""
    wandb = pytest.importorskip("wandb")
    home = tmp_path / "wandb-home"
    env = {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DISABLE_GIT": "true",
        "WANDB_CONFIG_DIR": home / "config",
        "WANDB_CACHE_DIR": home / "cache",
        "WANDB_DATA_DIR": home / "data",
        "WANDB_ARTIFACT_DIR": home / "artifacts",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    for key in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_DIR", "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(key, raising=False)
    yield
    wandb.teardown()


# ---------------------------------------------------------------- config and helpers (no W&B)


def test_off_by_default_and_modes_are_checked():
    assert not RunConfig().train.wandb.enabled
    assert WandbConfig(project="p", mode="offline").enabled
    c = tiny_config(Path("x.txt"), **{"train.wandb.mode": "ofline"})
    with pytest.raises(ValueError, match=r"train\.wandb\.mode.*'ofline'"):
        run_config(c)
    with pytest.raises(ValueError, match=r"train\.wandb\.tags must be a tuple of strings"):
        WandbConfig(tags="baseline")


def test_tags_from_the_command_line_and_old_config_json():
    c = tiny_config(Path("x.txt"))
    apply_override(c, "train.wandb.tags", "baseline,v2")
    apply_override(c, "train.wandb.project", "jaxgpt")
    wb = run_config(c).train.wandb
    assert wb.tags == ("baseline", "v2") and wb.project == "jaxgpt"
    # config.json holds the tags as a list; a config.json written before train.wandb loads.
    saved = json.loads(to_json(c))
    assert run_config(saved).train.wandb == wb
    del saved["train"]["wandb"]
    assert from_dict(RunConfig, saved).train.wandb == WandbConfig()


def test_run_id_is_written_once_and_reused(tmp_path):
    first = tracking.run_id(tmp_path)
    assert json.loads((tmp_path / "wandb.json").read_text()) == {"id": first}
    assert tracking.run_id(tmp_path) == first and len(first) == 8
    (tmp_path / "wandb.json").write_text("{not json")
    with pytest.raises(tracking.TrackingError, match=r"wandb\.json.*delete it to start a new"):
        tracking.run_id(tmp_path)


def test_wandb_files_go_to_a_local_folder_for_bucket_workdirs(tmp_path):
    assert tracking.local_dir(tmp_path) == tmp_path
    gs, s3 = tracking.local_dir("gs://bucket/runs/a"), tracking.local_dir("s3://bucket/runs/a")
    root = Path(tempfile.gettempdir()) / "jaxgpt-wandb"
    assert gs == root / "gs_bucket_runs_a" and s3 == root / "s3_bucket_runs_a"


def test_scalars_are_the_finite_numbers_of_a_line():
    line = {"loss": np.float32(1.5), "lr": 3e-4, "mfu": None, "n": 3, "nan": math.nan}
    assert tracking.scalars({**line, "inf": math.inf, "text": "x"}) == {
        "loss": 1.5,
        "lr": 3e-4,
        "n": 3,
    }


def test_missing_wandb_fails_before_any_compute(monkeypatch, small_corpus, tmp_path):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed: import fails
    tracking.check_available(WandbConfig())  # off: no package needed
    workdir = tmp_path / "run"
    config = tiny_config(small_corpus, **{"train.wandb.project": "jaxgpt"})
    with pytest.raises(tracking.TrackingError, match=r"pip install 'jaxgpt\[wandb\]'"):
        train(config, workdir)
    assert not workdir.exists()  # no data prepared, nothing written


# ---------------------------------------------------------------- W&B offline


def _read_runs(wandb_dir: Path) -> list[OfflineRun]:
    """The offline runs, once W&B has written them out: run.finish() returns before wandb-core
    has flushed the run file; teardown stops the service, which flushes (as at process exit)."""
    import wandb

    wandb.teardown()
    return offline_runs(wandb_dir)


def _only_run(wandb_dir: Path) -> OfflineRun:
    (run,) = _read_runs(wandb_dir)
    return run


def _table_rows(run: OfflineRun, key: str) -> list[list]:
    table = json.loads((run.directory / "files" / run.summary[f"{key}.path"]).read_text())
    assert table["columns"] == tracking.SAMPLE_COLUMNS
    return table["data"]


@pytest.mark.e2e  # W&B starts its wandb-core service process
def test_sink_logs_config_lines_samples_plot_and_summary(offline_wandb, tmp_path):
    """Lines past logged_through reach W&B; a train and an eval line of one step are one row."""
    config = {"model": {"vocab_size": 96}, "train": {"steps": 4}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    lines = [(s, {"loss": np.float32(4.0 / s), "lr": 1e-3, "mfu": None}) for s in (1, 2, 3, 4)]
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 4.0 / s}) + "\n" for s, _ in lines)
    )
    plot = metrics_lib.plot_losses(tmp_path)
    cfg = WandbConfig(project="jaxgpt-test", name="tiny", tags=("a", "b"))  # mode: $WANDB_MODE
    sink = tracking.WandbSink.open(cfg, tmp_path, logged_through=2)
    for step, values in lines:
        sink.write(step, values)
    sink.write(4, {"eval_loss": 1.25, "eval_ppl": math.exp(1.25)})
    sink.log_sample(2, "already logged")
    sink.log_sample(4, "the fox")
    sink.finish(plot, {"steps": 4, "eval_loss": 1.25, "best_step": None})

    run = _only_run(tmp_path / "wandb")
    assert run.run_id == json.loads((tmp_path / "wandb.json").read_text())["id"]
    assert (run.project, run.name, run.tags) == ("jaxgpt-test", "tiny", ["a", "b"])
    assert run.config == config
    assert [(r["_step"], r["loss"]) for r in run.history if "loss" in r] == [
        (3, float(np.float32(4 / 3))),
        (4, 1.0),
    ]
    (last,) = [r for r in run.history if r["_step"] == 4]
    assert last["eval_loss"] == 1.25 and "lr" in last and "mfu" not in last
    assert last["samples._type"] == "table-file" and last["loss_plot._type"] == "image-file"
    assert _table_rows(run, "samples") == [[4, "the fox"]]
    assert (run.directory / "files" / run.summary["loss_plot.path"]).is_file()
    assert run.summary["steps"] == 4 and run.summary["eval_loss"] == 1.25
    assert run.exit_code == 0


@pytest.mark.e2e
def test_a_failed_run_is_marked_failed(offline_wandb, tmp_path):
    """Also enough rows that the run file spans several 32 KiB blocks (records cut across them)."""
    (tmp_path / "config.json").write_text("{}")
    sink = tracking.WandbSink.open(WandbConfig(project="p"), tmp_path, 0)
    for step in range(1, 301):
        sink.write(step, {"loss": 1 / step, "lr": step * 1e-6, "grad_norm": 0.5})
    sink.abandon()  # what the loop does when it raises
    run = _only_run(tmp_path / "wandb")
    assert next(run.directory.glob("run-*.wandb")).stat().st_size > 3 * 32 * 1024
    assert run.exit_code == 1 and run.steps_with("loss") == list(range(1, 301))
    assert all(r["loss"] == 1 / r["_step"] for r in run.history)


@pytest.mark.e2e
def test_online_without_login_says_what_to_do(offline_wandb, monkeypatch, tmp_path):
    """mode=online overrides WANDB_MODE; with no API key W&B refuses at once (the server URL
    points at a closed loopback port, so nothing leaves the machine even if a key were found)."""
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "5")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(tracking.TrackingError, match=r"wandb login.*mode=offline"):
        tracking.WandbSink.open(WandbConfig(project="p", mode="online"), tmp_path, 0)


@pytest.mark.slow
@pytest.mark.e2e
def test_resumed_training_continues_the_same_wandb_run(offline_wandb, small_corpus, tmp_path):
    """Killed after step 12 with its last checkpoint at 10, then rerun: both sessions log to
    one W&B run id, and steps 11-12 (logged before the kill) are not logged twice."""
    workdir = tmp_path / "run"
    wb = {"train.wandb.project": "jaxgpt-test", "train.wandb.mode": "offline"}
    train(tiny_config(small_corpus, **wb), workdir, stop_at=12)
    shutil.rmtree(workdir / "checkpoints" / "12")  # as if killed before that checkpoint
    summary = train(tiny_config(small_corpus, **wb, **{"train.wandb.name": "resumed"}), workdir)
    assert summary.start_step == 10 and summary.steps == 20

    first, second = _read_runs(workdir / "wandb")
    run_id = json.loads((workdir / "wandb.json").read_text())["id"]
    assert first.run_id == second.run_id == run_id and second.name == "resumed"
    config = json.loads((workdir / "config.json").read_text())  # the resolved config
    assert second.config == config and config["model"]["vocab_size"] > 0
    config["train"]["wandb"]["name"] = ""  # the first session ran without a name
    assert first.config == config
    assert first.steps_with("loss") == list(range(1, 13))
    assert second.steps_with("loss") == list(range(13, 21))
    assert first.steps_with("eval_loss") == [10] and second.steps_with("eval_loss") == [20]
    rows = [r for run in (first, second) for r in run.history]
    assert sorted(r["_step"] for r in rows) == list(range(1, 21))  # each step once, one row
    # Every scalar of metrics.jsonl. The resumed run rewrote 11-12 there with the same model
    # values (resume is bitwise); only their timings differ from those W&B kept.
    logged = {r["_step"]: r for r in rows}
    for line in metrics_lib.read_metrics(workdir):
        step = line.pop("step")
        for key, value in tracking.scalars(line).items():
            if step > 12 or key not in TIMINGS:
                assert logged[step][key] == value, (step, key)
    ((step, text),) = _table_rows(second, "samples")  # this session's samples
    assert step == 20 and isinstance(text, str) and text
    assert second.summary["steps"] == 20 and second.summary["start_step"] == 10
    assert "loss_plot.path" in first.summary and "loss_plot.path" in second.summary
