"""Export to / import from Hugging Face GPT-2: same logits as `transformers`, bitwise round trips,
tokenizers that encode alike, a real workdir end to end, clear errors."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded: every load is local

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxgpt.data.tokenizer import HFTokenizer, Tokenizer, train_tokenizer  # noqa: E402
from jaxgpt.export import main  # noqa: E402
from jaxgpt.interop.hf import (  # noqa: E402
    entries,
    gpt_config_from_hf,
    hf_config,
    hf_to_params,
    import_hf,
    params_to_hf,
)
from jaxgpt.interop.hf_export import export_hf  # noqa: E402
from jaxgpt.interop.hf_tokenizer import write_hf_tokenizer  # noqa: E402
from jaxgpt.model import GPT, GPTConfig  # noqa: E402
from jaxgpt.workdir import restore_params, workdir_config  # noqa: E402

pytestmark = pytest.mark.slow  # trains or exports real runs; not in the fast subset

CFG = GPTConfig(vocab_size=101, block_size=32, n_layer=2, n_head=4, n_embd=32)
TOL = 1e-4


def random_params(cfg: GPTConfig, seed: int = 0) -> dict:
    """Initialized params with every leaf perturbed, so zero biases and unit scales can't hide
    a wrong mapping."""
    dummy = jnp.zeros((1, cfg.block_size), jnp.int32)
    params = nn.unbox(GPT(cfg).init(jax.random.key(seed), dummy)["params"])
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    noisy = [
        np.asarray(x + 0.05 * jax.random.normal(k, x.shape))
        for x, k in zip(leaves, keys, strict=True)
    ]
    return jax.tree.unflatten(treedef, noisy)


def stack_layers(params: dict, n_layer: int) -> dict:
    """Unrolled h_0..h_{L-1} params in the scan_layers layout: h/block with a leading L axis."""
    blocks = [params[f"h_{i}"] for i in range(n_layer)]
    rest = {k: v for k, v in params.items() if not k.startswith("h_")}
    return {**rest, "h": {"block": jax.tree.map(lambda *xs: np.stack(xs), *blocks)}}


def jax_logits(cfg: GPTConfig, params: dict, tokens: np.ndarray) -> np.ndarray:
    return np.asarray(GPT(cfg).apply({"params": params}, jnp.asarray(tokens)))


def torch_logits(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(tokens, dtype=torch.long)).logits.float().numpy()


def hf_model(cfg: GPTConfig, state_dict: dict[str, np.ndarray]):
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_config(cfg))).eval()
    missing, unexpected = model.load_state_dict(
        {k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, strict=False
    )
    assert set(missing) <= {"lm_head.weight"} and not unexpected, (missing, unexpected)
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()  # tied
    return model


def random_tokens(cfg: GPTConfig, batch: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, cfg.vocab_size, (batch, cfg.block_size))


def test_table_names_every_hf_key_once():
    hf_keys = set(
        transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_config(CFG))).state_dict()
    )
    ours = [e.hf_key for e in entries(CFG)]
    assert len(ours) == len(set(ours))
    assert set(ours) == hf_keys - {"lm_head.weight"}


@pytest.mark.parametrize("bias", [True, False])
def test_export_gives_transformers_the_same_logits(bias):
    cfg = dataclasses.replace(CFG, bias=bias)
    params = random_params(cfg)
    sd = params_to_hf(params, cfg)
    if not bias:  # HF GPT-2 always has biases: zeros compute the same
        assert all(not v.any() for k, v in sd.items() if k.endswith(".bias"))
    tokens = random_tokens(cfg)
    diff = np.abs(jax_logits(cfg, params, tokens) - torch_logits(hf_model(cfg, sd), tokens))
    assert diff.max() <= TOL, diff.max()


def test_scanned_params_export_like_unrolled_ones():
    params = random_params(CFG)
    scan_cfg = dataclasses.replace(CFG, scan_layers=True)
    scanned = stack_layers(params, CFG.n_layer)
    unrolled_sd, scanned_sd = params_to_hf(params, CFG), params_to_hf(scanned, scan_cfg)
    assert unrolled_sd.keys() == scanned_sd.keys()
    for key in unrolled_sd:
        np.testing.assert_array_equal(unrolled_sd[key], scanned_sd[key], err_msg=key)
    back = hf_to_params(scanned_sd, scan_cfg)
    jax.tree.map(np.testing.assert_array_equal, back, scanned)
    tokens = random_tokens(CFG)
    diff = np.abs(jax_logits(scan_cfg, scanned, tokens) - jax_logits(CFG, params, tokens))
    assert diff.max() <= TOL


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_hf_to_jaxgpt_to_hf_is_bitwise(dtype):
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_config(CFG)))
    sd = {k: v.to(dtype) for k, v in model.state_dict().items()}
    back = params_to_hf(hf_to_params(sd, CFG), CFG)
    assert back.keys() == sd.keys() - {"lm_head.weight"}
    for key, value in back.items():
        original = sd[key].view(torch.int16 if dtype == torch.bfloat16 else torch.int32)
        as_bits = value.view(np.int16 if dtype == torch.bfloat16 else np.int32)
        np.testing.assert_array_equal(as_bits, original.numpy(), err_msg=key)


def test_import_of_a_saved_transformers_model(tmp_path):
    torch.manual_seed(1)
    cfg_hf = transformers.GPT2Config(
        vocab_size=97, n_positions=24, n_embd=48, n_layer=3, n_head=6, resid_pdrop=0.0
    )
    model = transformers.GPT2LMHeadModel(cfg_hf).eval()
    with torch.no_grad():  # HF initializes biases to zero: make them count
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    model.save_pretrained(tmp_path / "st")
    assert (tmp_path / "st" / "model.safetensors").is_file()
    cfg, params = import_hf(tmp_path / "st")
    assert (cfg.vocab_size, cfg.block_size, cfg.n_embd, cfg.n_layer, cfg.n_head) == (
        97,
        24,
        48,
        3,
        6,
    )
    tokens = random_tokens(cfg, seed=2)
    expected = torch_logits(model, tokens)
    assert np.abs(jax_logits(cfg, params, tokens) - expected).max() <= TOL

    # pytorch_model.bin holding GPT2Model-style keys (no "transformer.", causal-mask buffers),
    # as the original OpenAI checkpoints do.
    legacy = tmp_path / "bin"
    legacy.mkdir()
    (legacy / "config.json").write_text((tmp_path / "st" / "config.json").read_text())
    sd = {k.removeprefix("transformer."): v for k, v in model.state_dict().items()}
    for i in range(cfg.n_layer):
        sd[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 24, 24, dtype=torch.bool))
    torch.save(sd, legacy / "pytorch_model.bin")
    _, legacy_params = import_hf(legacy)
    jax.tree.map(np.testing.assert_array_equal, legacy_params, params)
    scan_cfg, scanned = import_hf(tmp_path / "st", scan_layers=True)
    jax.tree.map(np.testing.assert_array_equal, scanned, stack_layers(params, cfg.n_layer))
    assert np.abs(jax_logits(scan_cfg, scanned, tokens) - expected).max() <= TOL


def test_config_round_trip():
    cfg = dataclasses.replace(CFG, dropout=0.1)
    assert gpt_config_from_hf(hf_config(cfg)) == cfg
    assert transformers.GPT2Config(**hf_config(cfg)).n_positions == cfg.block_size


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        import_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(ValueError, match=r"not a GPT-2, Llama or Qwen3 model.*'t5'"):
        import_hf(tmp_path)
    relu = {**hf_config(CFG), "activation_function": "relu"}
    with pytest.raises(ValueError, match="activation_function='relu'"):
        gpt_config_from_hf(relu)
    (tmp_path / "config.json").write_text(json.dumps(hf_config(CFG)))
    with pytest.raises(FileNotFoundError, match=r"no model\.safetensors or pytorch_model\.bin"):
        import_hf(tmp_path)

    sd = params_to_hf(random_params(CFG), CFG)
    wider = dataclasses.replace(CFG, vocab_size=CFG.vocab_size + 3)
    with pytest.raises(ValueError, match=r"transformer\.wte\.weight.*\(101, 32\).*\(104, 32\)"):
        hf_to_params(sd, wider)
    with pytest.raises(ValueError, match=r"lacks 12 GPT-2 weights.*transformer\.h\.2\."):
        hf_to_params(sd, dataclasses.replace(CFG, n_layer=3))
    with pytest.raises(ValueError, match=r"ln_f\.bias is nonzero.*bias=False"):
        hf_to_params(sd, dataclasses.replace(CFG, bias=False))
    with pytest.raises(ValueError, match=r"unexpected keys.*extra"):
        hf_to_params({**sd, "extra.weight": np.zeros(1)}, CFG)
    with pytest.raises(ValueError, match=r"lm_head\.weight differs"):
        hf_to_params({**sd, "lm_head.weight": sd["transformer.wte.weight"] + 1}, CFG)
    with pytest.raises(ValueError, match=r"h_0/attn/c_attn/kernel has shape"):
        params_to_hf(random_params(CFG), dataclasses.replace(CFG, n_head=2, n_embd=32))


# Code, indentation, tabs, runs of spaces, digits, accents, CJK, emoji, zero-width characters,
# and text that spells special or byte pieces.
UNICODE_LINES = [
    "Ünïcödé façade naïve — “quotes” 日本語のテキスト 中文 한국어 🎉🚀 e\u0301 \u200b",
    "\ttabs\tand  double  spaces   \n\n\n  trailing  ",
    "literal </s> <s> <unk> <0x41> ▁ ▁▁ <|endoftext|> 12345 3.14159",
]


def _code_docs() -> tuple[list[str], list[str]]:
    files = sorted(Path(json.__file__).parent.glob("*.py"))
    files += sorted(Path(dataclasses.__file__).parent.glob("t*.py"))[:6]
    docs = [f.read_text(encoding="utf-8") for f in files]
    held_out = [
        Path(pytest.__file__).read_text(encoding="utf-8"),
        "    def f(x):\n\t\treturn x  # 😀 ∑ λ\n\n",
        " ",
        "",
        "x" * 3000,
        *UNICODE_LINES,
    ]
    return docs[:-2] + UNICODE_LINES, docs[-2:] + held_out


@pytest.mark.parametrize("model_type", ["bpe", "char", "unigram"])
def test_sentencepiece_tokenizer_converts_to_the_same_ids(model_type, tmp_path):
    train_docs, test_docs = _code_docs()
    sp = train_tokenizer(train_docs, 0 if model_type == "char" else 1200, model_type)
    sp.save(tmp_path / "tokenizer.model")
    write_hf_tokenizer(tmp_path / "tokenizer.model", tmp_path, sp.eot_id, 64)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert (hf.eos_token_id, hf.bos_token_id) == (sp.eot_id, sp.eot_id)
    n_tokens = 0
    for doc in test_docs:
        ours, theirs = sp.encode(doc), hf(doc)["input_ids"]
        n_tokens += len(ours)
        if model_type == "unigram" and ours != theirs:
            # Viterbi ties (e.g. "▁▁▁▁"+"▁" vs "▁"+"▁▁▁▁"): SentencePiece breaks them by float32
            # rounding of its running path score, which no other implementation reproduces.
            score = lambda ids: sum(sp.sp.get_score(i) for i in ids)
            assert score(ours) == pytest.approx(score(theirs), abs=1e-3), doc[:80]
        else:
            assert ours == theirs, doc[:80]
        # SentencePiece reads a literal "▁" as its space symbol, and so does the conversion.
        assert hf.decode(ours) == sp.decode(ours) == doc.replace("▁", " ")
    assert n_tokens > 10_000


def _byte_level_bpe(docs: list[str], vocab_size: int) -> HFTokenizer:
    """A GPT-2-style tokenizer.json (byte-level BPE, <|endoftext|>) trained here."""
    from tokenizers import Tokenizer as HFBackend
    from tokenizers import decoders, models, pre_tokenizers, trainers

    backend = HFBackend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(docs, trainer)
    return HFTokenizer(backend.to_str())


def test_hf_tokenizer_json_is_shipped_as_is(tmp_path):
    train_docs, test_docs = _code_docs()
    ours = _byte_level_bpe(train_docs, 600)
    ours.save(tmp_path / "tokenizer.json")
    out = tmp_path / "out"
    out.mkdir()
    write_hf_tokenizer(tmp_path / "tokenizer.json", out, ours.eot_id, 64)
    hf = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert hf.eos_token == "<|endoftext|>" and hf.eos_token_id == ours.eot_id
    for doc in test_docs:  # "<|endoftext|>" spelled in text stays text, as in training
        assert hf(doc)["input_ids"] == ours.encode(doc), doc[:80]
        assert hf.decode(ours.encode(doc)) == doc


def _greedy_jaxgpt(cfg: GPTConfig, params: dict, prompt: list[int], n: int, tok: Tokenizer) -> list:
    """Argmax roll-out with one full forward per token (no cache) up to EOT; rows past the
    tokenizer's vocabulary (padding) are never chosen."""
    forward = jax.jit(lambda tokens: GPT(cfg).apply({"params": params}, tokens))
    ids = list(prompt)
    for _ in range(n):
        # A fixed-length buffer keeps one compiled shape; causal attention ignores the tail.
        buffer = np.zeros((1, cfg.block_size), np.int32)
        buffer[0, : len(ids)] = ids
        logits = np.asarray(forward(buffer))[0, len(ids) - 1]
        ids.append(int(np.argmax(logits[: tok.vocab_size])))
        if ids[-1] == tok.eot_id:
            break
    return ids[len(prompt) :]


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory) -> Path:
    """A real run: 20 steps of a 2-layer model with a SentencePiece BPE tokenizer."""
    from jaxgpt.run.loop import train
    from tests.helpers import tiny_config

    root = tmp_path_factory.mktemp("export_run")
    words = "the quick brown fox jumps over a lazy dog while seven wizards hex jovial kings".split()
    lines = [
        "    " * (i % 3) + " ".join(words[(i * 7 + j) % len(words)] for j in range(8)) + f" {i}."
        for i in range(1500)
    ]
    (root / "corpus.txt").write_text("\n".join(lines) + "\nnaïve café 🎉\n")
    config = tiny_config(
        root / "corpus.txt",
        **{
            "data.tokenizer.model_type": "bpe",
            "data.tokenizer.vocab_size": 400,
            "model.dropout": 0.0,
            "train.eval_every": 0,
            "train.sample_tokens": 0,
            "ckpt.every": 10,
        },
    )
    train(config, root / "run")
    return root / "run"


def test_export_of_a_trained_workdir_loads_in_transformers(trained_workdir, tmp_path):
    out = export_hf(trained_workdir, tmp_path / "hf")
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json"} <= names
    assert {"tokenizer.json", "tokenizer_config.json"} <= names
    model = transformers.AutoModelForCausalLM.from_pretrained(
        out, local_files_only=True, dtype=torch.float32
    ).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    cfg, _ = workdir_config(trained_workdir)
    params, step = restore_params(trained_workdir)
    assert step == 20
    tokens = random_tokens(cfg, seed=3)
    diff = np.abs(jax_logits(cfg, params, tokens) - torch_logits(model, tokens))
    assert diff.max() <= TOL, diff.max()

    sp = Tokenizer.load(trained_workdir / "tokenizer.model")
    prompt_text = "the quick brown fox"
    prompt = sp.encode(prompt_text)
    assert hf_tok(prompt_text)["input_ids"] == prompt
    n_new = 12
    ours = _greedy_jaxgpt(cfg, params, prompt, n_new, sp)
    with torch.no_grad():  # generation_config.json: stop at EOT, never pick padding rows
        generated = model.generate(torch.tensor([prompt]), max_new_tokens=n_new, do_sample=False)
    theirs = generated[0, len(prompt) :].tolist()
    assert theirs == ours
    assert hf_tok.decode(theirs) == sp.decode(ours)

    # bfloat16 weights: the same as our params rounded to bfloat16.
    out16 = export_hf(trained_workdir, tmp_path / "hf16", dtype="bfloat16", step=10)
    model16 = transformers.AutoModelForCausalLM.from_pretrained(
        out16, local_files_only=True, dtype=torch.float32
    ).eval()
    params10, _ = restore_params(trained_workdir, 10)
    rounded = jax.tree.map(lambda a: a.astype(ml_dtypes.bfloat16).astype(np.float32), params10)
    diff16 = np.abs(jax_logits(cfg, rounded, tokens) - torch_logits(model16, tokens))
    assert diff16.max() <= TOL, diff16.max()
    cfg16, imported = import_hf(out16)  # and back: the bf16 values, as float32 params
    assert dataclasses.replace(cfg16, dropout=cfg.dropout) == cfg
    jax.tree.map(np.testing.assert_array_equal, imported, rounded)


def test_cli(trained_workdir, tmp_path, capsys):
    main(["--workdir", str(trained_workdir), "--out", str(tmp_path / "hf"), "--dtype", "bfloat16"])
    assert "wrote" in capsys.readouterr().out
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and config["model_type"] == "gpt2"
    not_a_run = r"error: .*nowhere is not a jaxgpt workdir .*config\.json is missing"
    with pytest.raises(SystemExit, match=not_a_run):
        main(["--workdir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "y")])
    with pytest.raises(SystemExit, match=r"no checkpoint for step 7 .*have \[.*20\]"):
        main(["--workdir", str(trained_workdir), "--out", str(tmp_path / "z"), "--step", "7"])


def test_export_of_a_workdir_with_a_tokenizer_json(trained_workdir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_workdir, run, ignore=shutil.ignore_patterns("tokenizer.model", "data"))
    tokenizer = _byte_level_bpe(_code_docs()[0], 300)
    tokenizer.save(run / "tokenizer.json")
    out = export_hf(run, tmp_path / "hf")
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tokenizer.eot_id
    rows = workdir_config(run)[0].vocab_size  # the table is padded past the tokenizer
    assert generation["suppress_tokens"] == list(range(tokenizer.vocab_size, rows))
    hf_tok = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    text = "def f(x):\n    return x  # <|endoftext|> naïve"
    assert hf_tok(text)["input_ids"] == tokenizer.encode(text)
