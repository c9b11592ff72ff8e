"""Options shared by several commands."""

from __future__ import annotations

import click

from th_edit.devices import DEVICES, DTYPES
from th_edit.limits import MAX_SEED

# --seed of every command: what numpy and Optuna accept (a negative seed was a traceback).
SEED = click.IntRange(0, MAX_SEED)


def device_options(command):
    """--device and --dtype for commands that run a model (analysis and benchmarks)."""
    command = click.option("--dtype", type=click.Choice(DTYPES), default="float32", show_default=True,
                           help="Compute dtype (auto: the checkpoint's own).")(command)
    return click.option("--device", default="cpu", show_default=True, metavar="|".join(DEVICES),
                        help="Where the model runs: cpu, cuda[:N], mps, or auto (accelerate spreads it over the "
                             "GPUs and the CPU).")(command)
