"""jaxgpt ⇄ other ecosystems, in one place: Hugging Face folders (GPT-2, Llama, Qwen3) and
ONNX graphs.

Modules, one job each: hf (the GPT-2 HF key table and the shared machinery; params ⇄ state
dicts; config.json ⇄ GPTConfig; reading a HF folder), llama (the Llama and Qwen3 key tables),
hf_export (a training run written as a HF folder), hf_tokenizer (our tokenizers as HF tokenizer
files), onnx (a training run as an ONNX graph with past key/value inputs, checked under
onnxruntime), onnx_generate (sampling from such a graph with onnxruntime and its KV cache).
Heavy optional packages (torch, transformers, onnx, onnxruntime) load only inside the functions
that need them.
"""
