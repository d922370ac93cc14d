"""The OpenAI completions request (validated strictly) and the response bodies we send back."""

from __future__ import annotations

import time
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from jaxgpt.serve.engine import Event, TokenLogprob

NonEmptyStr = Annotated[str, Field(min_length=1)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False


class CompletionRequest(BaseModel):
    """POST /v1/completions. Strict types: "5" is not a number, 1.0 is not a count.

    OpenAI fields jaxgpt cannot honour (echo, suffix, penalties, logit_bias, best_of > 1) are
    refused with a message instead of being silently ignored; unknown fields are refused too,
    so a misspelled setting is never dropped.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str
    prompt: str | list[str] | list[int] | list[list[int]] = ""
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)  # not in OpenAI's API; 0 = off, as in jaxgpt.generate
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[NonEmptyStr] | None = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)
    logprobs: int | None = Field(None, ge=0, le=5)
    user: str | None = None
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        return v

    def unsupported(self) -> str | None:
        """Why the request asks for something this server does not do, or None."""
        if self.echo:
            return "echo is not supported; prepend the prompt to the returned text yourself"
        if self.suffix:
            return "suffix (insertion) is not supported by a left-to-right GPT"
        if self.best_of not in (None, 1):
            return "best_of is not supported; ask for n samples and pick with logprobs"
        if self.presence_penalty or self.frequency_penalty:
            return "presence_penalty and frequency_penalty are not supported; leave them at 0"
        if self.logit_bias:
            return "logit_bias is not supported"
        return None

    @property
    def prompts(self) -> list[str] | list[list[int]]:
        """The prompts as a list (texts, or token-id lists)."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and isinstance(p[0], int):
            return [p]  # one prompt given as token ids
        return p or [""]

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


def validation_message(error: ValidationError) -> str:
    """One line per problem: `field: what is wrong (got value)`."""
    lines = []
    for e in error.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "body"
        got = repr(e.get("input"))
        got = got if len(got) <= 60 else got[:57] + "..."
        lines.append(
            f"{loc}: {e['msg']} (got {got})" if e["type"] != "missing" else f"{loc}: field required"
        )
    return "; ".join(lines)


def error_body(
    message: str,
    kind: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """OpenAI's error shape, which its clients turn into exceptions carrying the message."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def logprobs_body(tokens: list[TokenLogprob], decode, offset: int) -> dict[str, Any]:
    """The completions API's logprobs object for some tokens (text_offset counts from offset)."""
    texts = [decode([t.token]) for t in tokens]
    offsets, at = [], offset
    for text in texts:
        offsets.append(at)
        at += len(text)
    return {
        "tokens": texts,
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [{decode([i]): lp for i, lp in t.top} for t in tokens],
        "text_offset": offsets,
    }


class CompletionBuilder:
    """Collects a request's events into the final response, or frames them as stream chunks."""

    def __init__(
        self, request_id: str, model: str, n_choices: int, top_logprobs: int | None, decode
    ) -> None:
        self.id, self.model, self.created = request_id, model, int(time.time())
        self.top_logprobs, self.decode = top_logprobs, decode
        self.texts = [""] * n_choices
        self.logprobs: list[list[TokenLogprob]] = [[] for _ in range(n_choices)]
        self.finish: list[str | None] = [None] * n_choices
        self.completion_tokens = 0

    @property
    def done(self) -> bool:
        return all(f is not None for f in self.finish)

    def add(self, event: Event) -> dict[str, Any] | None:
        """Record an event; returns its stream chunk (None when it carries nothing to send)."""
        i = event.index
        offset = len(self.texts[i])
        self.texts[i] += event.text
        self.completion_tokens += event.n_tokens
        tokens = self._trim(event.logprobs)
        self.logprobs[i] += tokens
        self.finish[i] = event.finish_reason
        if not (event.text or event.finish_reason or tokens):
            return None
        lp = logprobs_body(tokens, self.decode, offset) if self.top_logprobs is not None else None
        choice = {
            "index": i,
            "text": event.text,
            "logprobs": lp,
            "finish_reason": event.finish_reason,
        }
        return self._envelope([choice])

    def _trim(self, tokens: list[TokenLogprob]) -> list[TokenLogprob]:
        k = self.top_logprobs or 0
        return [TokenLogprob(t.token, t.logprob, t.top[:k]) for t in tokens]

    def usage(self, prompt_tokens: int) -> dict[str, int]:
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": prompt_tokens + self.completion_tokens,
        }

    def response(self, prompt_tokens: int) -> dict[str, Any]:
        """The whole (non-streamed) response."""
        choices = [
            {
                "index": i,
                "text": text,
                "logprobs": logprobs_body(self.logprobs[i], self.decode, 0)
                if self.top_logprobs is not None
                else None,
                "finish_reason": self.finish[i],
            }
            for i, text in enumerate(self.texts)
        ]
        return {**self._envelope(choices), "usage": self.usage(prompt_tokens)}

    def usage_chunk(self, prompt_tokens: int) -> dict[str, Any]:
        """The last stream chunk when stream_options.include_usage is set."""
        return {**self._envelope([]), "usage": self.usage(prompt_tokens)}

    def _envelope(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
