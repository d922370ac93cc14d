"""jaxgpt: train, evaluate, export and serve GPT language models with JAX and Flax."""

import os

# TensorBoard's event writer may import TensorFlow, whose start-up INFO lines are only noise here.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

__version__ = "0.1.0"
