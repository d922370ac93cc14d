"""Fine-tune existing weights on your data.

    python -m jaxgpt.train --config configs/finetune.py --workdir runs/ft \\
        --config.init_from=hf:/path/to/gpt2 --config.data.sources=jsonl:my_data.jsonl

init_from is hf:PATH (a Hugging Face GPT-2 folder on disk: config.json, model.safetensors or
pytorch_model.bin, tokenizer.json) or workdir:PATH (a jaxgpt run). The weights fix the model's
size and tokenizer. For supervised fine-tuning on {"prompt", "completion"} records (the loss
counts completion tokens only) add --config.data.format=sft.

Compared with pretraining: a 10× lower learning rate with a short warmup, a short schedule,
frequent evaluation, early stopping once validation loss stops improving, and the best params
kept in WORKDIR/best (what generate, evaluate and export use by default).
"""

from jaxgpt.configs import base


def get_config():
    c = base.get_config()
    c.init_from = "?"  # required: hf:PATH or workdir:PATH
    c.data.sources = "?"  # required: your data (see configs/base.py for the kinds)
    c.model.block_size = 1024  # shortened to the weights' context if that is smaller
    c.model.dropout = 0.1
    c.opt.lr = 6e-5
    c.opt.min_lr = 6e-6
    c.opt.warmup_steps = 20
    c.opt.weight_decay = 0.0
    c.train.steps = 1000
    c.train.batch_size = 16
    c.train.eval_every = 50
    c.train.eval_tokens = 65_536
    c.train.log_every = 10
    c.train.early_stop_patience = 3
    c.ckpt.every = 100
    c.ckpt.keep = 2
    c.ckpt.keep_best = True
    return c
