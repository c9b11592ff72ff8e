"""Options shared by several commands."""

from __future__ import annotations

import math

import click

from th_edit.devices import DEVICES, DTYPES
from th_edit.limits import MAX_SEED

# --seed of every command: what numpy and Optuna accept (a negative seed was a traceback).
SEED = click.IntRange(0, MAX_SEED)


class FiniteFloat(click.FloatRange):
    """A float option that refuses nan and ±inf: click's FloatRange lets nan through every bound
    (each comparison with nan is false), and a nan threshold silently selects nothing."""

    name = "float"

    def _describe_range(self) -> str:
        return "finite" if self.min is None and self.max is None else super()._describe_range()

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


def device_options(command):
    """--device and --dtype for commands that run a model (analysis and benchmarks)."""
    command = click.option("--dtype", type=click.Choice(DTYPES), default="float32", show_default=True,
                           help="Compute dtype (auto: the checkpoint's own).")(command)
    return click.option("--device", default="cpu", show_default=True, metavar="|".join(DEVICES),
                        help="Where the model runs: cpu, cuda[:N], mps, or auto (accelerate spreads it over the "
                             "GPUs and the CPU).")(command)
