"""Jitted prefill and one-token decode steps over a fixed set of batch slots.

Continuous batching: rows that joined at different steps decode side by side, each slot a row
of one `decode.cache.KVCache` (every row has its own length and positions), so a row joins by a
prefill into its slot and leaves by being ignored.

Shapes are bucketed so the number of compiles is bounded and all of them happen at startup:
prefill at (rows, prompt length) in powers of two, the decode step at powers of two of the
highest busy slot. A row whose cache is full slides through the same prefill (see
`Decoder.prefill`'s `drawn`), so generating past the context adds no shape.
"""

from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from jaxgpt.decode.cache import KVCache, init_cache, set_lengths
from jaxgpt.decode.generate import unscan_params
from jaxgpt.decode.sampling import pick_tokens, token_logprobs
from jaxgpt.model import GPT

# Most rows one prefill call takes; more arrivals are prefilled in several calls. Caps the
# number of prefill shapes compiled at startup.
PREFILL_ROWS = 8
# Top alternatives returned with every token (OpenAI's completions allow logprobs <= 5).
TOP_LOGPROBS = 5


@flax.struct.dataclass
class Slots:
    """Everything the decode step needs per slot, kept on the device between steps."""

    caches: list[KVCache]
    token_B: jax.Array  # the last token drawn: the next step's input
    t_B: jax.Array  # how many tokens the row has drawn (the step-key index)
    key_B2: jax.Array  # raw uint32 key data of the row's key (fold_in(key(seed), choice))
    temperature_B: jax.Array
    top_k_B: jax.Array
    top_p_B: jax.Array


def _pick(logits_BV, key_B2, t_B, slots_like: Slots, vocab_limit: int):
    """Tokens as decode.generate draws them, plus their log-probabilities and the top few."""
    keys_B = jax.vmap(jax.random.fold_in)(jax.random.wrap_key_data(key_B2), t_B)
    s = slots_like
    token_B = pick_tokens(logits_BV, keys_B, s.temperature_B, s.top_k_B, s.top_p_B, vocab_limit)
    return token_B, *token_logprobs(logits_BV, token_B, vocab_limit, TOP_LOGPROBS)


@functools.partial(jax.jit, static_argnames=("model", "vocab_limit"), donate_argnums=(1,))
def _prefill(
    params, slots: Slots, tokens_bP, len_b, slot_b, choice_b, new: Slots, *, model, vocab_limit
):
    """Run the prompts, draw each row's next token, and move the rows into their slots.

    `new.key_B2` holds each row's seed key, `choice_b` its choice index, `new.t_B` the tokens it
    has drawn before (0 for a new row; a sliding row's step-key index goes on where it was).
    Padding rows carry slot index B (past the end), so their writes are dropped.
    """
    b, P = tokens_bP.shape
    # Row keys as decode.sampling.row_keys makes them: fold_in(key(seed), choice). Folding here
    # rather than on the host keeps the number of compiled shapes independent of requests' sizes.
    seed_keys_b = jax.random.wrap_key_data(new.key_B2)
    new = new.replace(
        key_B2=jax.random.key_data(jax.vmap(jax.random.fold_in)(seed_keys_b, choice_b))
    )
    last_bV, caches = model.apply(
        {"params": params}, tokens_bP, init_cache(model.config, b, P), len_b - 1,
        method=GPT.last_logits,
    )  # fmt: skip
    caches = set_lengths(caches, len_b)
    t_b = new.t_B
    token_b, *info = _pick(last_bV, new.key_B2, t_b, new, vocab_limit)

    put = lambda full, part: full.at[slot_b].set(part, mode="drop")
    moved = [
        big.replace(
            k_BHSQ=big.k_BHSQ.at[slot_b, :, :P].set(small.k_BHSQ, mode="drop"),
            v_BHSQ=big.v_BHSQ.at[slot_b, :, :P].set(small.v_BHSQ, mode="drop"),
            length_B=put(big.length_B, small.length_B),
            # doc_mask: each position's document start (width 0 without it)
            start_BS=big.start_BS.at[slot_b, :P].set(small.start_BS, mode="drop"),
        )
        for big, small in zip(slots.caches, caches, strict=True)
    ]
    slots = Slots(
        caches=moved,
        token_B=put(slots.token_B, token_b),
        t_B=put(slots.t_B, t_b + 1),
        key_B2=put(slots.key_B2, new.key_B2),
        temperature_B=put(slots.temperature_B, new.temperature_B),
        top_k_B=put(slots.top_k_B, new.top_k_B),
        top_p_B=put(slots.top_p_B, new.top_p_B),
    )
    return slots, (token_b, *info)


@functools.partial(jax.jit, static_argnames=("model", "rows", "vocab_limit"), donate_argnums=(1,))
def _step(params, slots: Slots, *, model, rows, vocab_limit):
    """One token for the first `rows` slots (busy or not: a free slot's output is ignored)."""
    sub = jax.tree.map(lambda x: x[:rows], slots)
    logits_B1V, caches = model.apply({"params": params}, sub.token_B[:, None], caches=sub.caches)
    token_B, *info = _pick(logits_B1V[:, 0], sub.key_B2, sub.t_B, sub, vocab_limit)
    # Free slots keep stepping; pin their length inside the buffer. A busy row that filled it
    # slides (a fresh prefill sets its length) before it steps again.
    last = model.config.block_size - 1
    caches = [c.replace(length_B=jnp.minimum(c.length_B, last)) for c in caches]
    sub = sub.replace(caches=caches, token_B=token_B, t_B=sub.t_B + 1)
    slots = jax.tree.map(lambda full, part: full.at[:rows].set(part), slots, sub)
    return slots, (token_B, *info)


def seed_key_data(seed: int) -> np.ndarray:
    """Raw data (uint32[2]) of jax.random.key(seed), as jaxgpt.generate seeds its rows."""
    return np.asarray(jax.random.key_data(jax.random.key(seed)))


def _powers_of_two(lo: int, hi: int) -> list[int]:
    """lo, 2·lo, 4·lo, ... below hi, then hi itself."""
    sizes, size = [], lo
    while size < hi:
        sizes.append(size)
        size *= 2
    return [*sizes, hi]


def bucket(n: int, sizes: list[int]) -> int:
    """The smallest size that holds n."""
    return next(s for s in sizes if s >= n)


class Decoder:
    """The device side of the engine: `max_batch` slots, prefill into them, step them all."""

    def __init__(self, model: GPT, params: Any, vocab_limit: int, max_batch: int):
        params, model = unscan_params(params, model)
        self.model, self.params = model, jax.device_put(params)
        self.config = model.config
        self.vocab_limit = vocab_limit
        self.max_batch = max_batch
        self.step_sizes = _powers_of_two(1, max_batch)
        self.prefill_sizes = _powers_of_two(1, min(PREFILL_ROWS, max_batch))
        # Prompts shorter than 32 tokens cost about the same to run at 32.
        self.prompt_sizes = _powers_of_two(min(32, self.config.block_size), self.config.block_size)
        self.slots = self._empty(max_batch)

    def _empty(self, batch: int) -> Slots:
        c = self.config
        return Slots(
            caches=init_cache(c, batch, fresh=False),  # rows join one by one
            token_B=jnp.zeros((batch,), jnp.int32),
            t_B=jnp.zeros((batch,), jnp.int32),
            key_B2=jnp.zeros((batch, 2), jnp.uint32),
            temperature_B=jnp.zeros((batch,), jnp.float32),
            top_k_B=jnp.zeros((batch,), jnp.int32),
            top_p_B=jnp.ones((batch,), jnp.float32),
        )

    def prefill(
        self,
        prompts: list[list[int]],
        slots: list[int],
        seed_keys: np.ndarray,
        choices: list[int],
        temperature: list[float],
        top_k: list[int],
        top_p: list[float],
        drawn: list[int] | None = None,
    ) -> tuple[np.ndarray, ...]:
        """Start up to PREFILL_ROWS rows in the given slots, from position 0 of their caches.

        Row i draws with fold_in(seed_keys[i], choices[i]) (seed_keys: raw uint32[n, 2] data),
        its next token with step key `drawn[i]`: 0 for a new row (prompts[i] is its prompt), the
        tokens drawn so far for a row that slides (prompts[i] is its window of latest tokens).
        Returns (token, logprob, top ids, top logprobs) per row, as numpy arrays.
        """
        n = len(prompts)
        b = bucket(n, self.prefill_sizes)
        P = bucket(max(map(len, prompts)), self.prompt_sizes)
        tokens = np.zeros((b, P), np.int32)
        lens = np.ones((b,), np.int32)
        for i, p in enumerate(prompts):
            tokens[i, : len(p)] = p
            lens[i] = len(p)
        pad = lambda values, fill, dtype: np.array(list(values) + [fill] * (b - n), dtype)
        new = Slots(
            caches=[],
            token_B=np.zeros((b,), np.int32),
            t_B=pad(drawn or [0] * n, 0, np.int32),
            key_B2=np.concatenate([seed_keys, np.zeros((b - n, 2), np.uint32)]).astype(np.uint32),
            temperature_B=pad(temperature, 0.0, np.float32),
            top_k_B=pad(top_k, 0, np.int32),
            top_p_B=pad(top_p, 1.0, np.float32),
        )
        self.slots, out = _prefill(
            self.params, self.slots, tokens, lens, pad(slots, self.max_batch, np.int32),
            pad(choices, 0, np.int32), new,
            model=self.model, vocab_limit=self.vocab_limit,
        )  # fmt: skip
        return tuple(np.asarray(x)[:n] for x in out)

    def step(self, busy_rows: int) -> tuple[np.ndarray, ...]:
        """One token for every slot below busy_rows (rounded up to a compiled size)."""
        rows = bucket(busy_rows, self.step_sizes)
        self.slots, out = _step(
            self.params, self.slots, model=self.model, rows=rows, vocab_limit=self.vocab_limit
        )
        return tuple(np.asarray(x) for x in out)

    def warm_up(self) -> int:
        """Compile every prefill and step shape now (rows go to no slot); returns the count."""
        count = 0
        for b in self.prefill_sizes:
            for P in self.prompt_sizes:
                n = b
                self.prefill(
                    [[0] * P] * n, [self.max_batch] * n, np.zeros((n, 2), np.uint32),
                    [0] * n, [0.0] * n, [0] * n, [1.0] * n,
                )  # fmt: skip
                count += 1
        for rows in self.step_sizes:
            self.step(rows)
            count += 1
        self.slots = self._empty(self.max_batch)
        seed_key_data(0)  # the one host-side JAX op a request runs
        return count
