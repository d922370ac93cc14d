"""GPT-2 XL (1.5B parameters): 48 layers, 25 heads, width 1600, context 1024."""

from jaxgpt.configs import base


def get_config():
    c = base.get_config()
    c.model.vocab_size = 50257
    c.model.n_layer = 48
    c.model.n_head = 25
    c.model.n_embd = 1600
    c.model.dtype = "bfloat16"  # bf16 matmuls on GPU/TPU; master weights stay float32
    c.model.scan_layers = True
    c.model.remat = "full"
    c.opt.lr = 2e-4
    c.opt.min_lr = 2e-5
    c.train.batch_size = 512  # GPT-2's batch; divisible by 64, 128, 256 devices
    c.mesh.data = 1
    c.mesh.fsdp = -1
    return c
