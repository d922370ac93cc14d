"""The tokenizer endpoints: GET /tokenizer_info, POST /tokenize, POST /detokenize.

They are the ones vLLM serves and lm-eval's remote tokenizer (`tokenizer_backend=remote`)
calls at the server's root, so a client needs no copy of the tokenizer: lm-eval tokenizes
contexts and continuations here, then sends token ids to /v1/completions.

End of text is both the bos and the eos token, as in the Hugging Face folder `jaxgpt.export`
writes (documents in jaxgpt's token streams start after one). lm-eval finds their ids by
tokenizing their names (`encode(eos_token)[0]`) and starts every perplexity window and every
empty context with that id; jaxgpt's tokenizers encode a special token's name as plain text, so
/tokenize maps a prompt that is exactly that name to the end-of-text id.
"""

from __future__ import annotations

from typing import Any

from jaxgpt.serve.errors import ApiError
from jaxgpt.serve.loading import ServedModel
from jaxgpt.serve.protocol import DetokenizeRequest, TokenizeRequest


def eot_token(tokenizer) -> str:
    """The end-of-text token's name ("</s>" for SentencePiece, "<|endoftext|>" for GPT-2)."""
    name = getattr(tokenizer, "eot_token", "")  # HFTokenizer: the name it was given, if any
    if isinstance(name, str) and name:
        return name
    if (sp := getattr(tokenizer, "sp", None)) is not None:  # SentencePiece
        return sp.id_to_piece(tokenizer.eot_id)
    if (tk := getattr(tokenizer, "tk", None)) is not None:  # Hugging Face tokenizers
        return tk.id_to_token(tokenizer.eot_id) or ""
    return tokenizer.decode([tokenizer.eot_id])


def tokenizer_class(tokenizer) -> str:
    if getattr(tokenizer, "sp", None) is not None:
        return "jaxgpt-sentencepiece"
    if getattr(tokenizer, "tk", None) is not None:
        return "jaxgpt-tokenizers"
    return type(tokenizer).__name__


def check_model(requested: str | None, served: ServedModel) -> None:
    """404 unless `requested` is None (not sent) or the served name."""
    if requested is not None and requested != served.name:
        raise ApiError(
            404,
            f"model {requested!r} does not exist; this server serves "
            f"{served.name!r} (see GET /v1/models)",
            param="model",
            code="model_not_found",
        )


def checked_unicode(text: str, param: str = "prompt") -> str:
    """The text, if a tokenizer can encode it (JSON may carry lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ApiError(
            400,
            f"{param} is not valid Unicode: {e.reason} at character {e.start}",
            param=param,
        ) from e
    return text


def tokenizer_info(served: ServedModel) -> dict[str, Any]:
    """What lm-eval's remote tokenizer reads (eos, bos, pad token, chat template) and more."""
    tok = served.tokenizer
    eot = eot_token(tok)
    return {
        "eos_token": eot,
        "bos_token": eot,
        "pad_token": None,
        "eos_token_id": tok.eot_id,
        "bos_token_id": tok.eot_id,
        "tokenizer_class": tokenizer_class(tok),
        "vocab_size": tok.vocab_size,
        "model_max_length": served.context,
        "add_bos_token": False,
        "chat_template": None,
    }


def tokenize(served: ServedModel, req: TokenizeRequest) -> dict[str, Any]:
    """Token ids of a text; the end-of-text token's name is that token."""
    check_model(req.model, served)
    tok = served.tokenizer
    text = checked_unicode(req.prompt)
    ids = [tok.eot_id] if text == eot_token(tok) else tok.encode(text)
    return {"tokens": ids, "count": len(ids), "max_model_len": served.context}


def detokenize(served: ServedModel, req: DetokenizeRequest) -> dict[str, Any]:
    """The text of some token ids."""
    check_model(req.model, served)
    tok = served.tokenizer
    bad = [i for i in req.tokens if not 0 <= i < tok.vocab_size]
    if bad:
        raise ApiError(
            400,
            f"token ids must be in [0, {tok.vocab_size}) (got {bad[:5]})",
            param="tokens",
        )
    return {"prompt": tok.decode(req.tokens)}
