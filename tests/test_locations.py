"""A URL jaxgpt cannot use (another scheme, a lost slash, a malformed bucket) is an error
everywhere, never a local folder named after it; gs:// and s3:// URLs become epath paths."""

from __future__ import annotations

from pathlib import Path

import pytest
from etils import epath

from jaxgpt import config as config_lib
from jaxgpt import evaluate, export, generate, train
from jaxgpt.config import (
    UnsupportedLocationError,
    check_location,
    is_remote,
    load_config_file,
    location,
    override,
)
from jaxgpt.data.sources import parse_sources
from jaxgpt.init_from import resolve
from jaxgpt.run.loop import train as train_run

REFUSED = {
    "hdfs://nn/x": "hdfs:// locations are not supported",
    "http://host/x": "Mount other storage",
    "s3:/bucket/run": "did you mean s3://bucket/run",
    "GS://b/x": "did you mean gs://b/x",
    "gcs://bucket/run": "did you mean gs://bucket/run",
    "s3a://bucket/run": "did you mean s3://bucket/run",
    "gs:///run": "not a valid gs:// location",
    "s3://Bucket/run": "not a valid s3:// location",
    "gs://b": "not a valid gs:// location",  # bucket names have 3 characters or more
}


@pytest.mark.parametrize("url", sorted(REFUSED))
def test_unusable_urls_are_refused_with_what_to_do(url):
    with pytest.raises(UnsupportedLocationError, match="nothing was written") as e:
        check_location(url, "--workdir")
    assert url in str(e.value) and REFUSED[url] in str(e.value)


@pytest.mark.parametrize("url", ["gs://bucket/run", "s3://my.bucket-1/a/b", "gs://bkt"])
def test_bucket_urls_become_epath_paths(url):
    assert check_location(url, "--workdir") == url
    path = location(url, "--workdir")
    assert isinstance(path, epath.Path) and not isinstance(path, Path)
    assert str(path) == url and is_remote(path) and str(path / "x") == f"{url}/x"
    with pytest.raises(UnsupportedLocationError, match="must be a local path"):
        check_location(url, "--json", remote_ok=False)


def test_local_look_alikes_stay_local():
    """epath would map a local /gs/b/x to gs://b/x; jaxgpt keeps local paths pathlib."""
    for text in ["/gs/bucket/x", "runs/s3", "gs_bucket/run"]:
        assert location(text, "--workdir") == Path(text) and not is_remote(text)


@pytest.mark.parametrize("path", ["runs/tiny", "/abs/run", "", "C:/Users/run", "a:b", "~/x"])
def test_local_paths_pass_unchanged(path):
    assert check_location(path, "--workdir") == path


@pytest.mark.parametrize(
    ("main", "argv"),
    [
        (train.main, ["--config", "tiny", "--workdir", "s3:/bucket/run"]),
        (generate.main, ["--workdir", "gcs://bucket/run", "--prompt", "hi"]),
        (evaluate.main, ["--workdir", "hdfs://nn/run"]),
        (evaluate.main, ["--workdir", "runs/x", "--json", "gs://bucket/results.json"]),
        (export.main, ["--workdir", "runs/x", "--out", "s3:/bucket/model"]),
    ],
)
def test_commands_fail_before_writing_anything(main, argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 1
    assert "(nothing was written)" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no ./s3:/bucket/run, no ./gs:/...


def test_config_keys_and_library_calls_refuse_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for key, value in [("data.path", "gs:/b/data"), ("data.tokenizer.path", "S3://b/t.model")]:
        with pytest.raises(UnsupportedLocationError, match=key.replace(".", r"\.")):
            config_lib.run_config(override(load_config_file("tiny"), **{key: value}))
    with pytest.raises(UnsupportedLocationError, match=r"data\.sources \(text\)"):
        parse_sources("text:gcs://bucket/corpus/*.txt")
    with pytest.raises(UnsupportedLocationError, match="init_from"):
        resolve("workdir:s3:/bucket/run")
    with pytest.raises(UnsupportedLocationError, match="workdir"):
        train_run(load_config_file("tiny"), "gs:/bucket/run")
    assert list(tmp_path.iterdir()) == []
