"""jaxgpt ⇄ other ecosystems, in one place: Hugging Face GPT-2 folders and ONNX graphs.

Modules, one job each: hf (the one HF key table; params ⇄ state dicts; config.json ⇄ GPTConfig;
reading a HF folder), hf_export (a training run written as a HF folder), hf_tokenizer (our
tokenizers as HF tokenizer files), onnx (a training run as an ONNX graph, checked under
onnxruntime). Heavy optional packages (torch, transformers, onnx, onnxruntime) load only inside
the functions that need them.
"""
