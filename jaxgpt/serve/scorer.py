"""Scoring prompts for `echo`: one full forward pass over each prompt, the log-probability of
every prompt token and the most likely alternatives at every position.

lm-eval's loglikelihood, multiple-choice and perplexity tasks send `echo: true` with
`logprobs`: they read the log-probability the model gives each token of the prompt. Decoding's
prefill projects only a prompt's last position to the vocabulary, so scoring has its own pass:
the model over up to `max_rows` prompts at once (right-padded to a length bucket, as prefill
pads), then the tied output projection and a float32 log-softmax over the model's whole
vocabulary, a slice of positions at a time so the [rows, length, vocab] float32 logits are
never whole in memory. That is the function the training loss and a forward pass compute:
`log_softmax(GPT.apply(tokens))` gathered at the next tokens.

The pass also draws the token after each prompt (for `max_tokens: 1`) exactly as a decode row
draws its first one: `pick_tokens` with the step key fold_in(fold_in(key(seed), choice), 0).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxgpt.decode.sampling import pick_tokens
from jaxgpt.model import GPT

# Top alternatives returned at every position (OpenAI's completions allow logprobs <= 5).
TOP_LOGPROBS = 5
# float32 logits one chunk of the output projection may hold: 2**26 floats = 256 MiB.
LOGITS_BUDGET = 2**26


def chunk_size(rows: int, length: int, vocab: int) -> int:
    """Positions per chunk of the output projection: a power of two, at most `length`, whose
    [rows, chunk, vocab] float32 logits fit LOGITS_BUDGET (at least one position)."""
    fits = max(LOGITS_BUDGET // (rows * vocab), 1)
    size = 1
    while size * 2 <= min(fits, length):
        size *= 2
    return size


@functools.partial(jax.jit, static_argnames=("model", "vocab_limit", "chunk"))
def _score(params, tokens_RP, len_R, key_R2, choice_R, temperature_R, top_k_R, top_p_R, *,
           model, vocab_limit, chunk):  # fmt: skip
    """Per position t of each row: log p(tokens[t + 1]) and the top ids and log-probabilities
    of the distribution after token t (ids past vocab_limit, padding rows of the embedding
    table, never listed); per row: the token drawn after its last real position and its
    log-probability. Positions at or past a row's length are padding (their values unused)."""
    R, P = tokens_RP.shape
    apply = functools.partial(model.apply, {"params": params})
    hidden_RPD = apply(tokens_RP, method=GPT.hidden_states)
    targets_RP = jnp.concatenate([tokens_RP[:, 1:], jnp.zeros((R, 1), tokens_RP.dtype)], axis=1)
    n_chunks = -(-P // chunk)
    pad = n_chunks * chunk - P
    hidden_RPD = jnp.pad(hidden_RPD, ((0, 0), (0, pad), (0, 0)))
    targets_RP = jnp.pad(targets_RP, ((0, 0), (0, pad)))
    top = min(TOP_LOGPROBS, vocab_limit)

    def one_chunk(xs):
        h_RCD, targets_RC = xs
        logp_RCV = jax.nn.log_softmax(apply(h_RCD, method=GPT.logits), axis=-1)
        chosen_RC = jnp.take_along_axis(logp_RCV, targets_RC[..., None], axis=-1)[..., 0]
        real_V = jnp.arange(logp_RCV.shape[-1]) < vocab_limit
        top_lp_RCK, top_id_RCK = jax.lax.top_k(jnp.where(real_V, logp_RCV, -jnp.inf), top)
        return chosen_RC, top_id_RCK, top_lp_RCK

    # [R, K·C, ...] → [K, R, C, ...]: lax.map walks the leading axis, one chunk at a time.
    by_chunk = lambda x: jnp.swapaxes(x.reshape(R, n_chunks, chunk, *x.shape[2:]), 0, 1)
    unchunk = lambda x: jnp.swapaxes(x, 0, 1).reshape(R, n_chunks * chunk, *x.shape[3:])[:, :P]
    chosen, top_id, top_lp = jax.lax.map(one_chunk, (by_chunk(hidden_RPD), by_chunk(targets_RP)))

    last_RD = jnp.take_along_axis(hidden_RPD, (len_R - 1)[:, None, None], axis=1)[:, 0]
    last_RV = apply(last_RD, method=GPT.logits)
    row_keys = jax.vmap(jax.random.fold_in)(jax.random.wrap_key_data(key_R2), choice_R)
    step_keys = jax.vmap(jax.random.fold_in)(row_keys, jnp.zeros_like(choice_R))
    token_R = pick_tokens(last_RV, step_keys, temperature_R, top_k_R, top_p_R, vocab_limit)
    logp_RV = jax.nn.log_softmax(last_RV, axis=-1)
    token_lp_R = jnp.take_along_axis(logp_RV, token_R[:, None], axis=-1)[:, 0]
    return unchunk(chosen), unchunk(top_id), unchunk(top_lp), token_R, token_lp_R


@dataclasses.dataclass
class Scored:
    """One prompt's scores, on the host. For a prompt of n tokens: `logprobs[j]` is log p(token
    j + 1) for j < n − 1; `top_ids[j]`, `top_logprobs[j]` the alternatives after token j (j < n,
    the last one for the drawn token); `token` the drawn next token and `token_logprob` its
    log-probability."""

    logprobs: np.ndarray
    top_ids: np.ndarray
    top_logprobs: np.ndarray
    token: int
    token_logprob: float


def _bucket(n: int, sizes: list[int]) -> int:
    return next(s for s in sizes if s >= n)


def _powers_of_two_to(hi: int) -> list[int]:
    sizes = [1]
    while sizes[-1] < hi:
        sizes.append(min(sizes[-1] * 2, hi))
    return sizes


class Scorer:
    """The device side of echo requests: score up to `max_rows` prompts per call.

    Shares the decoder's (unrolled) model and device params, so scoring costs no second copy
    of the weights. Shapes are bucketed like prefill's, and `warm_up` compiles all of them."""

    def __init__(
        self, model: GPT, params: Any, vocab_limit: int, max_rows: int, prompt_sizes: list[int]
    ):
        if max_rows < 1:
            raise ValueError(f"a scorer needs max_rows >= 1, got {max_rows}")
        self.model, self.params, self.vocab_limit = model, params, vocab_limit
        self.max_rows = max_rows
        self.row_sizes = _powers_of_two_to(max_rows)
        self.prompt_sizes = prompt_sizes

    def score(
        self,
        prompts: list[list[int]],
        seed_keys: np.ndarray,
        choices: list[int],
        temperature: list[float],
        top_k: list[int],
        top_p: list[float],
    ) -> list[Scored]:
        """Score up to max_rows prompts (each at most the context); row i draws its next token
        with fold_in(fold_in(seed_keys[i], choices[i]), 0) (seed_keys: raw uint32[n, 2])."""
        n = len(prompts)
        R = _bucket(n, self.row_sizes)
        P = _bucket(max(map(len, prompts)), self.prompt_sizes)
        tokens = np.zeros((R, P), np.int32)
        lens = np.ones((R,), np.int32)
        for i, p in enumerate(prompts):
            tokens[i, : len(p)] = p
            lens[i] = len(p)
        pad = lambda values, fill, dtype: np.array(list(values) + [fill] * (R - n), dtype)
        keys = np.concatenate([seed_keys, np.zeros((R - n, 2), np.uint32)]).astype(np.uint32)
        out = _score(
            self.params, tokens, lens, keys, pad(choices, 0, np.int32),
            pad(temperature, 0.0, np.float32), pad(top_k, 0, np.int32), pad(top_p, 1.0, np.float32),
            model=self.model, vocab_limit=self.vocab_limit,
            chunk=chunk_size(R, P, self.model.config.vocab_size),
        )  # fmt: skip
        chosen, top_id, top_lp, token, token_lp = (np.asarray(x) for x in out)
        return [
            Scored(
                chosen[i, : len(p) - 1],
                top_id[i, : len(p)],
                top_lp[i, : len(p)],
                int(token[i]),
                float(token_lp[i]),
            )
            for i, p in enumerate(prompts)
        ]

    def warm_up(self) -> int:
        """Compile every (rows, length) shape now; returns the count."""
        count = 0
        for R in self.row_sizes:
            for P in self.prompt_sizes:
                self.score([[0] * P] * R, np.zeros((R, 2), np.uint32), [0] * R, [0.0] * R,
                           [0] * R, [1.0] * R)  # fmt: skip
                count += 1
        return count
