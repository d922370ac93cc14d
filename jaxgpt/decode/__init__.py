"""The decoding core: one KV cache, sampling, the sliding-window rule, batched generation.

Offline generation (`decode.generate`, behind `python -m jaxgpt.generate` and the samples
training prints) and the server (`jaxgpt.serve.decoder`) both decode with these modules:
    cache.py     KVCache, the per-row-position cache every attention layer reads and writes
    sampling.py  row and step keys; pick_tokens (greedy, temperature, top-k, top-p)
    window.py    the sliding window that lets generation run past the context
    generate.py  generate_batch / generate: prefill, then a jitted loop of decode steps

Nothing is imported here, so `jaxgpt.model` can name the cache type without an import cycle.
"""
