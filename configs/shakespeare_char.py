"""The classic char-level Shakespeare baseline: 4 layers, 4 heads, width 128, T=64, batch 12."""

from jaxgpt.configs import base


def get_config():
    c = base.get_config()
    c.model.n_layer = 4
    c.model.n_head = 4
    c.model.n_embd = 128
    c.model.block_size = 64
    c.model.vocab_multiple = 1
    c.data.sources = "shakespeare"  # shipped with jaxgpt: the same text as the classic file
    c.data.tokenizer.model_type = "char"
    c.data.tokenizer.vocab_size = 0  # char models: exactly the characters seen, plus specials
    c.opt.lr = 1e-3
    c.opt.min_lr = 1e-4
    c.opt.warmup_steps = 100
    c.opt.b2 = 0.99
    c.train.steps = 2000
    c.train.batch_size = 12
    c.train.log_every = 50
    c.train.eval_every = 500
    c.train.eval_tokens = 20 * 12 * 64
    c.train.sample_prompt = "ROMEO:"
    c.train.sample_tokens = 200
    c.ckpt.every = 1000
    return c
