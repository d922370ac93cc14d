"""Plan a run before paying for it: memory per device, whether it fits, and how long it takes.

`python -m jaxgpt.plan --config configs/xl.py --devices 64 --device_memory_gb 95`

Shapes only, nothing allocated (jaxgpt.run.plan and jaxgpt.estimates).
"""

from __future__ import annotations

import sys

from jaxgpt import config as config_lib
from jaxgpt.run.plan import format_plan, largest_batch, plan


def main(argv: list[str] | None = None) -> None:
    """Parse flags, plan, print; bad configs and unknown keys exit non-zero with the reason."""
    parser = config_lib.make_parser("plan", __doc__, config=True)
    add = parser.add_argument
    add("--devices", type=int, required=True, help="devices in the whole run (fills -1 axes)")
    add("--device_memory_gb", type=float, required=True, help="memory of one device in GB (1e9)")
    add("--device_kind", default="H100", help="device kind for the peak FLOP/s table")
    add("--mfu", type=float, default=0.45, help="model FLOPs utilization for the time estimate")
    add("--peak_flops", type=float, default=0.0, help="peak FLOP/s per device; 0 = by kind")
    add("--max_batch", action="store_true", help="also print the largest batch that fits")
    f = config_lib.parse_args(parser, argv)
    try:
        result = plan(f.config, f.devices, f.device_memory_gb, f.mfu, f.device_kind, f.peak_flops)
        best = f.max_batch and largest_batch(f.config, f.devices, f.device_memory_gb, f.device_kind)
    except ValueError as e:
        sys.exit(f"error: {e}")
    print(format_plan(result))
    if f.max_batch:
        micro = f.config.train.microbatches
        print(
            f"max batch {best} sequences per step in {micro} microbatch(es) fit "
            f"{f.device_memory_gb:g} GB per device (train.batch_size; planner estimate)"
        )


if __name__ == "__main__":
    main()
