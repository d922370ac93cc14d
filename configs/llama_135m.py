"""A Llama-architecture model of ~135M parameters, shaped like SmolLM2-135M (HuggingFaceTB):
30 layers, width 576, 9 query and 3 key/value heads (head dim 64), SwiGLU width 1536, vocabulary
49152, rotary θ 100000, RMSNorm ε 1e-5, tied embeddings: 134,515,008 parameters, the same
tensors as that model. Context 2048 (SmolLM2 was later extended to 8192). Exports as a Hugging
Face LlamaForCausalLM folder.

The shape is SmolLM2's; the data and the training recipe are jaxgpt's (those of
configs/small.py, the GPT-2 preset of about the same size): tune them for your corpus.
"""

from jaxgpt.configs import base


def get_config():
    c = base.get_config()
    c.model.vocab_size = 49152
    c.model.block_size = 2048
    c.model.n_layer = 30
    c.model.n_head = 9
    c.model.n_kv_head = 3
    c.model.n_embd = 576
    c.model.mlp_hidden = 1536
    c.model.position = "rope"
    c.model.rope_theta = 100000.0
    c.model.norm = "rmsnorm"
    c.model.norm_eps = 1e-5
    c.model.mlp = "swiglu"
    c.model.bias = False
    c.model.tie_embeddings = True
    c.model.dtype = "bfloat16"  # bf16 matmuls on GPU/TPU; master weights stay float32
    c.data.tokenizer.vocab_size = 49152
    c.opt.lr = 6e-4
    c.opt.min_lr = 6e-5
    return c
