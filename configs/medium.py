"""GPT-2 medium (350M parameters): 24 layers, 16 heads, width 1024, context 1024."""

from jaxgpt.configs import base


def get_config():
    c = base.get_config()
    c.model.vocab_size = 50257
    c.model.n_layer = 24
    c.model.n_head = 16
    c.model.n_embd = 1024
    c.model.dtype = "bfloat16"  # bf16 matmuls on GPU/TPU; master weights stay float32
    c.opt.lr = 3e-4
    c.opt.min_lr = 3e-5
    return c
