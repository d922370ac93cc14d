"""The one flag parser of every command (jaxgpt/config/command_line.py), in-process: typed
--config.KEY=VALUE overrides, presets, and clear errors for bad input."""

from __future__ import annotations

import pytest

from jaxgpt.config import (
    ConfigValueError,
    apply_override,
    load_config_file,
    make_parser,
    parse_args,
)


def _parse(*argv: str, config: bool = True):
    parser = make_parser("train", "test", config=config)
    parser.add_argument("--workdir")
    return parse_args(parser, list(argv))


def test_overrides_take_the_type_of_the_key():
    args = _parse(
        "--config", "tiny", "--workdir", "w",
        "--config.opt.lr=3e-4",  # float
        "--config.train.steps", "1e3",  # int written as a float, space-separated form
        "--config.model.bias=false",  # bool
        "--config.data.sources=text:a.txt,jsonl:b.jsonl",  # str kept verbatim
        "--config.model.remat_names=qkv,mlp_fc",  # tuple of words
        "--config.opt.min_lr=0",  # an int for a float key
    )  # fmt: skip
    c = args.config
    assert args.workdir == "w"
    assert c.opt.lr == 3e-4 and isinstance(c.opt.lr, float)
    assert c.train.steps == 1000 and isinstance(c.train.steps, int)
    assert c.model.bias is False
    assert c.data.sources == "text:a.txt,jsonl:b.jsonl"
    assert c.model.remat_names == ("qkv", "mlp_fc")
    assert c.opt.min_lr == 0.0 and isinstance(c.opt.min_lr, float)


def test_tuple_overrides_accept_python_literals():
    c = load_config_file("tiny")
    apply_override(c, "model.remat_names", "('qkv',)")
    assert c.model.remat_names == ("qkv",)
    apply_override(c, "model.remat_names", "attn_out")
    assert c.model.remat_names == ("attn_out",)


@pytest.mark.parametrize(
    ("key", "text", "message"),
    [
        ("opt.lrr", "1", "unknown config key 'opt.lrr'; did you mean 'opt.lr'"),
        ("optt.lr", "1", "unknown config key 'optt'"),
        ("opt", "1", "is a section"),
        ("train.steps", "many", "train.steps=many: expected int"),
        ("train.steps", "2.5", "train.steps=2.5: expected int"),
        ("model.bias", "maybe", "expected true or false"),
        ("opt.lr", "'fast'", "opt.lr='fast': expected float"),
    ],
)
def test_bad_overrides_name_the_key(key, text, message):
    with pytest.raises(ConfigValueError, match=message.replace("(", r"\(")):
        apply_override(load_config_file("tiny"), key, text)


def test_command_line_errors_exit_with_the_reason_and_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parse("--config", "tiny", "--config.opt.lrr=1")
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "error: unknown config key 'opt.lrr'" in err and "usage: python -m jaxgpt.train" in err
    with pytest.raises(SystemExit):
        _parse("--config", "no_such_preset")
    assert "no such preset" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parse("--workdir", "w")  # --config is required
    assert "--config" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parse("--config", "tiny", "--config.opt.lr")  # no value
    assert "--config.opt.lr needs a value" in capsys.readouterr().err


def test_a_command_without_a_config_refuses_overrides(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parse("--workdir", "w", "--config.opt.lr=1", config=False)
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --config.opt.lr" in capsys.readouterr().err
