"""GPT-2 large (774M parameters): 36 layers, 20 heads, width 1280, context 1024."""

from jaxgpt.configs import base


def get_config():
    c = base.get_config()
    c.model.vocab_size = 50257
    c.model.n_layer = 36
    c.model.n_head = 20
    c.model.n_embd = 1280
    c.model.dtype = "bfloat16"  # bf16 matmuls on GPU/TPU; master weights stay float32
    c.model.scan_layers = True
    c.opt.lr = 2.5e-4
    c.opt.min_lr = 2.5e-5
    return c
