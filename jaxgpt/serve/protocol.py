"""The OpenAI completions request (validated strictly) and the response bodies we send back."""

from __future__ import annotations

import time
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from jaxgpt.serve.engine import Event, TokenLogprob

# Stop sequences: lm-eval's shipped tasks send up to 5 plus the end-of-text string; each stop
# is checked against the text's tail at every token, so their number and length are bounded.
MAX_STOPS = 16
MAX_STOP_CHARS = 128
# OpenAI's completions API returns at most 5 alternatives per token.
MAX_LOGPROBS = 5
StopStr = Annotated[str, Field(max_length=MAX_STOP_CHARS)]
NonEmptyStop = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False


class CompletionRequest(BaseModel):
    """POST /v1/completions. Strict types: "5" is not a number, 1.0 is not a count.

    OpenAI fields jaxgpt cannot honour (suffix, penalties, logit_bias, best_of > 1) are refused
    with a message instead of being silently ignored; unknown fields are refused too, so a
    misspelled setting is never dropped. Hugging Face generation settings that lm-eval forwards
    from a task's `generation_kwargs` are accepted where they ask for what the server does
    anyway (num_beams 1, repetition_penalty 1, do_sample false with temperature 0), and refused
    otherwise; max_new_tokens is a second cap on the tokens generated.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str
    prompt: str | list[str] | list[int] | list[list[int]] = ""
    max_tokens: int = Field(16, ge=0)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)  # not in OpenAI's API; 0 = off, as in jaxgpt.generate
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: StopStr | list[NonEmptyStop] | None = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)
    logprobs: int | None = None
    user: str | None = None
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    # Hugging Face generate() settings, as lm-eval forwards them from task YAML files.
    max_new_tokens: int | None = Field(None, ge=0)
    do_sample: bool | None = None
    num_beams: int | None = None
    repetition_penalty: float | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop sequences")
        return v

    @field_validator("logprobs")
    @classmethod
    def _logprobs_range(cls, v: int | None) -> int | None:
        if v is not None and not 0 <= v <= MAX_LOGPROBS:
            raise ValueError(
                f"logprobs must be 0 to {MAX_LOGPROBS} (alternatives per token, OpenAI's limit)"
            )
        return v

    @model_validator(mode="after")
    def _both_caps(self) -> CompletionRequest:
        # max_tokens and max_new_tokens both cap the tokens generated: honour the smaller.
        if self.max_new_tokens is not None and self.max_new_tokens < self.max_tokens:
            self.max_tokens = self.max_new_tokens
        return self

    def unsupported(self) -> str | None:
        """Why the request asks for something this server does not do, or None."""
        if message := self._echo_problem():
            return message
        if self.suffix:
            return "suffix (insertion) is not supported by a left-to-right GPT"
        if self.best_of not in (None, 1):
            return "best_of is not supported; ask for n samples and pick with logprobs"
        if self.presence_penalty or self.frequency_penalty:
            return "presence_penalty and frequency_penalty are not supported; leave them at 0"
        if self.logit_bias:
            return "logit_bias is not supported"
        return self._hf_problem()

    def _echo_problem(self) -> str | None:
        if not self.echo:
            if self.max_tokens == 0:
                return "max_tokens 0 needs echo: true (score the prompt without generating)"
            return None
        if self.stream:
            return "echo cannot be streamed: send stream false (the whole response comes at once)"
        if self.max_tokens > 1:
            return (
                "echo supports max_tokens 0 (score the prompt) or 1 (and draw the next token; "
                "lm-eval sends 1); for a longer completion send echo false"
            )
        return None

    def _hf_problem(self) -> str | None:
        if self.num_beams not in (None, 1):
            return "num_beams > 1 (beam search) is not supported; leave num_beams at 1"
        if self.repetition_penalty not in (None, 1.0):
            return "repetition_penalty is not supported; leave it at 1"
        if self.do_sample is False and self.temperature > 0:
            return "do_sample false asks for greedy decoding: send temperature 0"
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


class TokenizeRequest(BaseModel):
    """POST /tokenize, as vLLM takes it and lm-eval's remote tokenizer sends it."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = None
    prompt: str
    add_special_tokens: bool = True  # jaxgpt's tokenizers add none either way

    @model_validator(mode="before")
    @classmethod
    def _no_chat(cls, data: Any) -> Any:
        if isinstance(data, dict) and "messages" in data:
            raise ValueError("chat messages are not supported (no chat template); send `prompt`")
        return data


class DetokenizeRequest(BaseModel):
    """POST /detokenize."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = None
    tokens: list[int]


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
    """The completions API's logprobs object for some tokens (text_offset counts from offset).

    An echoed prompt's first token has no logprob and no alternatives: null in both lists, as
    OpenAI's legacy completions answer. Alternatives whose texts coincide (byte pieces of one
    character all decode to the same replacement character) keep the first, most likely one,
    so the top value is always the best logprob."""
    texts = [decode([t.token]) for t in tokens]
    offsets, at = [], offset
    for text in texts:
        offsets.append(at)
        at += len(text)
    return {
        "tokens": texts,
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [_alternatives(t.top, decode) for t in tokens],
        "text_offset": offsets,
    }


def _alternatives(top: list[tuple[int, float]] | None, decode) -> dict[str, float] | None:
    if top is None:
        return None
    out: dict[str, float] = {}
    for i, lp in top:
        out.setdefault(decode([i]), lp)
    return out


class CompletionBuilder:
    """Collects a request's events into the final response, or frames them as stream chunks."""

    def __init__(
        self,
        request_id: str,
        model: str,
        n_choices: int,
        top_logprobs: int | None,
        decode,
        echo: list[str] | None = None,
    ) -> None:
        """`echo`: each choice's prompt text, which its text then starts with."""
        self.id, self.model, self.created = request_id, model, int(time.time())
        self.top_logprobs, self.decode = top_logprobs, decode
        self.texts = list(echo) if echo is not None else [""] * n_choices
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
        return [
            TokenLogprob(t.token, t.logprob, None if t.top is None else t.top[:k]) for t in tokens
        ]

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
