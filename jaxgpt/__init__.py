"""jaxgpt: train, evaluate, export and serve GPT language models with JAX and Flax."""

import os

from jaxgpt import host_memory

# Before anything else loads: `python -m jaxgpt.train` and the other step commands restart
# themselves once with glibc's huge-page tunable (jaxgpt/host_memory.py says why).
host_memory.restart_with_huge_pages()

# TensorBoard's event writer may import TensorFlow, whose start-up INFO lines are only noise here.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

__version__ = "0.1.0"
