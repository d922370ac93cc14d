"""A Llama-architecture model of ~360M parameters, shaped like SmolLM2-360M (HuggingFaceTB):
32 layers, width 960, 15 query and 5 key/value heads (head dim 64), SwiGLU width 2560,
vocabulary 49152, rotary θ 100000, RMSNorm ε 1e-5, tied embeddings: 361,821,120 parameters,
the same tensors as that model. Context 2048 (SmolLM2 was later extended to 8192). Exports as a
Hugging Face LlamaForCausalLM folder.

The shape is SmolLM2's; the data and the training recipe are jaxgpt's (those of
configs/medium.py, the GPT-2 preset of about the same size): tune them for your corpus.
"""

from jaxgpt.configs import llama_135m


def get_config():
    c = llama_135m.get_config()
    c.model.n_layer = 32
    c.model.n_head = 15
    c.model.n_kv_head = 5
    c.model.n_embd = 960
    c.model.mlp_hidden = 2560
    c.opt.lr = 3e-4
    c.opt.min_lr = 3e-5
    return c
