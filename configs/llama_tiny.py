"""A small Llama-style model that trains on CPU in a few minutes: configs/tiny.py's size and
recipe (4 layers, 4 heads, width 128, context 128) with the Llama switches: rotary positions,
RMSNorm, SwiGLU MLP, 2 key/value heads (grouped-query attention), no biases. Exports as a
Hugging Face LlamaForCausalLM folder."""

from jaxgpt.configs import tiny


def get_config():
    c = tiny.get_config()
    c.model.position = "rope"
    c.model.norm = "rmsnorm"
    c.model.mlp = "swiglu"  # hidden width 8·128/3 rounded up to 384
    c.model.n_kv_head = 2
    c.model.bias = False
    return c
