"""HTTP serving: an OpenAI-compatible completions API over a continuously batched KV-cache decoder.

`python -m jaxgpt.serve --workdir DIR`; see docs/serving.md. Modules, one job each:
loading (model dir → ServedModel), decoder (jitted prefill/step over slots), text (ids → streamed
text, stop strings), engine (the batching thread), protocol (request validation, response
bodies), metrics (Prometheus text), app (FastAPI routes, auth, limits), connection (uvicorn's
HTTP/1.1 with a deadline for request headers), server (uvicorn, signals).
"""
