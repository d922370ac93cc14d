"""GPT-2 small (124M parameters): 12 layers, 12 heads, width 768, context 1024."""

from jaxgpt.configs import base


def get_config():
    c = base.get_config()
    c.model.vocab_size = 50257
    c.model.n_layer = 12
    c.model.n_head = 12
    c.model.n_embd = 768
    c.model.dtype = "bfloat16"  # bf16 matmuls on GPU/TPU; master weights stay float32
    c.opt.lr = 6e-4
    c.opt.min_lr = 6e-5
    return c
