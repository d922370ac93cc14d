"""A URL where a path goes is an error everywhere, never a local folder named after it."""

from __future__ import annotations

import pytest

from jaxgpt import config as config_lib
from jaxgpt import evaluate, export, generate, train
from jaxgpt.config import UnsupportedLocationError, check_location, load_config_file, override
from jaxgpt.data.sources import parse_sources
from jaxgpt.init_from import resolve
from jaxgpt.run.loop import train as train_run

URLS = ["gs://bucket/run", "s3://bucket/run", "s3:/bucket/run", "hdfs://nn/x", "GS://b/x"]


@pytest.mark.parametrize("url", URLS)
def test_urls_are_refused_with_what_to_do(url):
    with pytest.raises(UnsupportedLocationError, match="not supported") as e:
        check_location(url, "--workdir")
    assert url in str(e.value) and "Mount the storage" in str(e.value)


@pytest.mark.parametrize("path", ["runs/tiny", "/abs/run", "", "C:/Users/run", "a:b", "~/x"])
def test_local_paths_pass_unchanged(path):
    assert check_location(path, "--workdir") == path


@pytest.mark.parametrize(
    ("main", "argv"),
    [
        (train.main, ["--config", "tiny", "--workdir", "s3://bucket/run"]),
        (generate.main, ["--workdir", "gs://bucket/run", "--prompt", "hi"]),
        (evaluate.main, ["--workdir", "gs://bucket/run"]),
        (export.main, ["--workdir", "runs/x", "--out", "s3:/bucket/model"]),
    ],
)
def test_commands_fail_before_writing_anything(main, argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 1
    assert "locations are not supported" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no ./s3:/bucket/run, no ./gs:/...


def test_config_keys_and_library_calls_refuse_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for key, value in [("data.path", "gs://b/data"), ("data.tokenizer.path", "s3://b/t.model")]:
        with pytest.raises(UnsupportedLocationError, match=key.replace(".", r"\.")):
            config_lib.run_config(override(load_config_file("tiny"), **{key: value}))
    with pytest.raises(UnsupportedLocationError, match=r"data\.sources \(text\)"):
        parse_sources("text:gs://bucket/corpus/*.txt")
    with pytest.raises(UnsupportedLocationError, match="init_from"):
        resolve("workdir:s3://bucket/run")
    with pytest.raises(UnsupportedLocationError, match="workdir"):
        train_run(load_config_file("tiny"), "gs://bucket/run")
    assert list(tmp_path.iterdir()) == []
