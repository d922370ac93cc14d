"""A small GPT that trains on CPU in a few minutes on the built-in Python-stdlib corpus."""

from jaxgpt.configs import base


def get_config():
    c = base.get_config()
    c.model.n_layer = 4
    c.model.n_head = 4
    c.model.n_embd = 128
    c.model.block_size = 128
    c.data.sources = "stdlib"
    c.data.stdlib_max_mb = 4.0
    c.data.tokenizer.vocab_size = 2048
    c.data.tokenizer.train_mb = 4.0
    c.opt.lr = 2e-3
    c.opt.min_lr = 2e-4
    c.opt.warmup_steps = 50
    c.opt.b2 = 0.99
    c.train.steps = 1000
    c.train.batch_size = 16
    c.train.log_every = 20
    c.train.eval_every = 250
    c.train.eval_tokens = 65_536
    c.ckpt.every = 250
    return c
