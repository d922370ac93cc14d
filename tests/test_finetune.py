"""Starting from existing weights (init_from=hf:/workdir:), early stopping and the best
checkpoint, and the errors for sources that don't fit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from jaxgpt import metrics as metrics_lib
from jaxgpt.config import load_config_file
from jaxgpt.interop.hf_export import export_hf
from jaxgpt.run.loop import train
from jaxgpt.workdir import restore_params
from tests.helpers import tiny_config

pytestmark = pytest.mark.slow  # trains or exports real runs; not in the fast subset

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A trained 2-layer run, and its export as a Hugging Face folder."""
    tmp = tmp_path_factory.mktemp("ft")
    corpus = tmp / "corpus.txt"
    corpus.write_text("".join(f"row {i % 17}: a bird in the hand.\n" for i in range(1500)))
    workdir = tmp / "source"
    summary = train(
        tiny_config(corpus, **{"train.steps": 30, "model.dropout": 0.0, "train.eval_every": 0}),
        workdir,
    )
    hf_dir = export_hf(workdir, tmp / "hf")
    return corpus, workdir, hf_dir, summary


def eval_losses(workdir: Path) -> dict[int, float]:
    return {
        r["step"]: r["eval_loss"]
        for r in metrics_lib.read_metrics(workdir)
        if r.get("eval_loss") is not None
    }


def finetune_config(corpus: Path, init_from: str, **overrides):
    settings = {"init_from": init_from, "train.steps": 4, "train.eval_every": 2}
    settings.update({"model.dropout": 0.0, "model.n_layer": 1, "model.n_embd": 16})
    return tiny_config(corpus, **{**settings, **overrides})


def test_init_from_hf_on_a_2x2x2_mesh_starts_where_the_source_ended(source, tmp_path):
    """Imported through the HF folder (its tokenizer.json included) into a data×fsdp×tensor
    mesh: the loss before fine-tuning equals the source run's final validation loss."""
    corpus, _, hf_dir, summary = source
    mesh = {"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2}
    workdir = tmp_path / "ft"
    ft = train(finetune_config(corpus, f"hf:{hf_dir}", **mesh), workdir)
    assert eval_losses(workdir)[0] == pytest.approx(summary.eval_loss, abs=1e-4)
    assert ft.steps == 4 and ft.eval_loss < summary.eval_loss + 0.5
    config = json.loads((workdir / "config.json").read_text())
    # The weights decided the shape, whatever the config said (n_layer 1, n_embd 16 above).
    assert config["model"]["n_layer"] == 2 and config["model"]["n_embd"] == 32
    assert config["data"]["tokenizer"]["path"] == str(hf_dir / "tokenizer.json")
    assert (workdir / "tokenizer.json").is_file()


def test_init_from_workdir_into_scanned_layers(source, tmp_path):
    corpus, src, _, summary = source
    workdir = tmp_path / "ft"
    train(finetune_config(corpus, f"workdir:{src}", **{"model.scan_layers": True}), workdir)
    assert eval_losses(workdir)[0] == pytest.approx(summary.eval_loss, abs=1e-4)


def test_early_stopping_keeps_the_best_params(source, tmp_path):
    """A learning rate that wrecks the model: step 0 stays best, training stops after
    `patience` worse evaluations, and restore_params returns the step-0 (source) params."""
    corpus, src, _, _ = source
    workdir = tmp_path / "ft"
    cfg = finetune_config(
        corpus,
        f"workdir:{src}",
        **{
            "opt.lr": 3.0,
            "opt.warmup_steps": 0,
            "opt.grad_clip": 0.0,
            "train.steps": 50,
            "train.eval_every": 2,
            "train.early_stop_patience": 2,
            "ckpt.keep_best": True,
        },
    )
    summary = train(cfg, workdir)
    assert summary.stopped_early and summary.steps == 4
    assert summary.best_step == 0
    best = json.loads((workdir / "best" / "best.json").read_text())
    assert best["step"] == 0 and [s for s, _ in best["history"]] == [0, 2, 4]
    params, step = restore_params(workdir)
    source_params, _ = restore_params(src)
    assert step == 0
    np.testing.assert_array_equal(params["wte"]["embedding"], source_params["wte"]["embedding"])
    latest, step = restore_params(workdir, 4)
    assert step == 4 and not np.array_equal(latest["wte"]["embedding"], params["wte"]["embedding"])
    again = train(cfg, workdir)  # rerun: stays stopped, evaluates only
    assert again.stopped_early and again.steps == 4 and again.start_step == 4


def test_finetune_config_says_what_to_set(tmp_path):
    from jaxgpt.run.loop import train as run

    config = load_config_file(REPO / "configs" / "finetune.py")
    with pytest.raises(ValueError, match=r"set --config\.init_from=hf:PATH"):
        run(config, tmp_path / "ft")


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda d: "gpt2", ValueError, "expected hf:PATH"),
        (lambda d: f"hf:{d / 'missing'}", FileNotFoundError, "is not a directory"),
        (lambda d: f"hf:{d}", FileNotFoundError, "no config.json"),
        (lambda d: f"workdir:{d}", FileNotFoundError, "not a jaxgpt workdir"),
    ],
    ids=["no-kind", "missing", "not-hf", "not-workdir"],
)
def test_bad_sources_are_clear_errors(small_corpus, tmp_path, make, error, match):
    with pytest.raises(error, match=match):
        train(finetune_config(small_corpus, make(tmp_path)), tmp_path / "ft")


def test_hf_folder_of_another_architecture_or_shape(source, tmp_path):
    corpus, _, hf_dir, _ = source
    for name in ("model.safetensors", "tokenizer.json", "generation_config.json"):
        (tmp_path / name).write_bytes((hf_dir / name).read_bytes())
    config = json.loads((hf_dir / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "t5"}))
    with pytest.raises(ValueError, match="not a GPT-2, Llama or Qwen3 model"):
        train(finetune_config(corpus, f"hf:{tmp_path}"), tmp_path / "ft")
    (tmp_path / "config.json").write_text(json.dumps({**config, "n_embd": 64}))
    with pytest.raises(ValueError, match="shape"):
        train(finetune_config(corpus, f"hf:{tmp_path}"), tmp_path / "ft2")


def test_a_tokenizer_that_does_not_match_the_model(source, small_corpus, tmp_path):
    """Another tokenizer with a different vocabulary would scramble the embeddings: refused."""
    corpus, _, hf_dir, _ = source
    other = tmp_path / "other"
    train(tiny_config(small_corpus, **{"train.steps": 1, "train.sample_tokens": 0}), other)
    cfg = finetune_config(
        corpus, f"hf:{hf_dir}", **{"data.tokenizer.path": str(other / "tokenizer.model")}
    )
    with pytest.raises(ValueError, match="the model's embeddings belong to its own tokenizer"):
        train(cfg, tmp_path / "ft")
