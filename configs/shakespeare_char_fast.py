"""Char-level Shakespeare, fast: reaches validation loss 1.88 (what the classic PyTorch baseline,
nanoGPT's "baby GPT on CPU", reaches after its 2000 iterations) on the standard char-level split
in about 385 steps of 12 sequences: a third of the baseline's training time on the 2-core CPU,
counting jaxgpt's compile (0.33 on 2026-11-29). benchmarks/time_to_quality.py races both in one
run; docs/performance.md ("Time to quality") has the figures, the curve and what each change
bought.

The same data, split, model size (4 layers, 4 heads, width 128), context (64, so validation is
the same task) and batch (12) as configs/shakespeare_char.py, with:
  - a Llama-style block: rotary positions, RMSNorm, ReLU² MLP, no biases;
  - Muon (lr 0.03) for the hidden matrices, AdamW lr 3e-3 → 3e-4 for embeddings and norms;
  - a 500-step cosine schedule with 40 warmup steps;
  - one CPU device (mesh.cpu_devices=1) instead of one per core.

    python -m jaxgpt.train --config configs/shakespeare_char_fast.py --workdir runs/fast
"""

from jaxgpt.configs import shakespeare_char


def get_config():
    c = shakespeare_char.get_config()
    c.model.position = "rope"
    c.model.norm = "rmsnorm"
    c.model.mlp = "relu2"
    c.model.bias = False
    c.opt.name = "muon"
    c.opt.muon_lr = 0.03
    c.opt.lr = 3e-3
    c.opt.min_lr = 3e-4
    c.opt.warmup_steps = 40
    # Batch 12, as the baseline: 24 needed about as many sequences, at 2.6-3x the time per step.
    c.train.steps = 500
    c.train.eval_every = 100
    # One CPU device: at this size a second one buys little, and on a loaded host its
    # collectives stalled (docs/performance.md, "Time to quality").
    c.mesh.cpu_devices = 1
    return c
