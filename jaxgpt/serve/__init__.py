"""HTTP serving: an OpenAI-compatible completions API over a continuously batched KV-cache decoder.

`python -m jaxgpt.serve --workdir DIR`; see docs/serving.md. Modules, one job each:
loading (model dir → ServedModel), decoder (jitted prefill/step over slots), scorer (jitted full
forward passes that score echo prompts), text (ids → streamed text, stop strings), engine (the
batching thread), protocol (request validation, response bodies), tokenizing (the /tokenize,
/detokenize, /tokenizer_info endpoints' logic), metrics (Prometheus text), app (FastAPI routes,
auth, limits), connection (uvicorn's HTTP/1.1 with a deadline for request headers), server
(uvicorn, signals).
"""
