"""Checkpoint save and restore time: local disk against loopback bucket emulators.

    python benchmarks/storage_checkpoint.py [--configs tiny,small] [--repeats 3]

For each config, the full train state (params + AdamW moments + counters, float32) is saved
with jaxgpt's Checkpointer (synchronously: the time until the checkpoint is committed) and
restored into the same shardings, `repeats` times per target; medians and the ratio to local
disk are printed. The emulators (fake-gcs-server, moto's S3) run on this same machine, so the
figures measure jaxgpt + Orbax + TensorStore + the HTTP path, not a cloud's network.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import os  # noqa: E402

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import optax  # noqa: E402
from flax import linen as nn  # noqa: E402

from jaxgpt import config as config_lib  # noqa: E402
from jaxgpt.checkpoint import Checkpointer  # noqa: E402
from jaxgpt.model import GPT, count_params  # noqa: E402
from jaxgpt.state import TrainState  # noqa: E402
from tests.storage_servers import GCSServer, S3Server, new_bucket  # noqa: E402


def train_state(name: str) -> TrainState:
    rc = config_lib.run_config(config_lib.load_config_file(name))
    cfg = config_lib.model_config(rc.model, rc.model.vocab_size or 50304)
    model = GPT(cfg)
    tokens = jax.numpy.zeros((1, 8), jax.numpy.int32)
    params = nn.unbox(model.init(jax.random.key(0), tokens)["params"])
    tx = optax.adamw(1e-3)
    return TrainState.fresh(params, tx.init(params))


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def time_target(workdir: str, state: TrainState, repeats: int) -> tuple[float, float]:
    """(median save s, median restore s) over `repeats` checkpoints into workdir."""
    saves, restores = [], []
    for i in range(repeats):
        ckpt = Checkpointer(workdir, every=1, keep=2, async_save=False)
        t0 = time.perf_counter()
        ckpt.save(i + 1, state)
        ckpt.wait()
        saves.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        restored = ckpt.restore(_abstract(state), i + 1)
        jax.block_until_ready(restored)
        restores.append(time.perf_counter() - t0)
        ckpt.close()
    return statistics.median(saves), statistics.median(restores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="tiny,small")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    servers = {"gs": GCSServer(), "s3": S3Server()}
    try:
        for name in args.configs.split(","):
            state = train_state(name)
            size = sum(x.nbytes for x in jax.tree.leaves(state))
            n = count_params(state.params)
            print(f"{name}: {n / 1e6:.1f}M params, state {size / 2**20:.0f} MiB")
            with tempfile.TemporaryDirectory() as local:
                base = time_target(str(Path(local) / name), state, args.repeats)
            print(f"  local disk   save {base[0]:7.2f} s   restore {base[1]:7.2f} s")
            for kind, server in servers.items():
                url, env = new_bucket(server, kind)
                os.environ.update(env)
                save, restore = time_target(f"{url}/{name}", state, args.repeats)
                print(
                    f"  {kind} emulator  save {save:7.2f} s ({save / base[0]:4.1f}x)   "
                    f"restore {restore:7.2f} s ({restore / base[1]:4.1f}x)"
                )
    finally:
        for server in servers.values():
            server.stop()


if __name__ == "__main__":
    main()
