"""Options and parameter types shared by several commands (one declaration per option)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import click

from th_edit.devices import DEVICES, DTYPES
from th_edit.errors import UserError
from th_edit.limits import MAX_BATCH_SIZE, MAX_PROMPTS, MAX_SEED, digits_at_most, shown_number
from th_edit.recipe import BENCH_SIZES
from th_edit.tasks import registry
from th_edit.tasks.laundry import MAX_ITEMS, MIN_ITEMS

# --seed of every command: what numpy and Optuna accept (a negative seed was a traceback).
SEED = click.IntRange(0, MAX_SEED)


class NItems(list):
    """The list lengths N an --n-items value names, remembering how it was written (for messages)."""

    def __init__(self, values: list[int], text: str):
        super().__init__(values)
        self.text = text

    def __str__(self) -> str:
        return self.text


def parse_n_items(text: str) -> list[int]:
    """'2-8' -> [2..8]; '2,3,5' -> [2, 3, 5]; each N within MIN_ITEMS..MAX_ITEMS."""
    text = text.replace(" ", "")
    if not re.fullmatch(r"\d+-\d+|\d+(,\d+)*", text):
        raise UserError(f"--n-items: expected a range like 2-8 or a list like 2,3,5, got '{text}'")
    # Bounds first: a range is only built once both ends are known to be small.
    parts = [part.lstrip("0") or "0" for part in re.split(r"[-,]", text)]
    bounds = [digits_at_most(part, MAX_ITEMS) for part in parts]
    outside = [part for part, value in zip(parts, bounds) if value is None or value < MIN_ITEMS]
    if outside:
        raise UserError(f"--n-items: N must be between {MIN_ITEMS} and {MAX_ITEMS}, got {shown_number(outside[0])}")
    if "-" in text:
        low, high = bounds
        if low > high:
            raise UserError(f"--n-items: the range {text} is empty")
        return list(range(low, high + 1))
    return sorted(set(bounds))


class NItemsType(click.ParamType):
    """--n-items: a range (2-8) or a list (2,3,5) of list lengths; a bad value is one `error:` line."""

    name = "N-ITEMS"

    def convert(self, value, param, ctx) -> NItems:
        if isinstance(value, NItems):
            return value
        return NItems(parse_n_items(str(value)), str(value))


N_ITEMS = NItemsType()


def n_items_option(default: str, help: str = f"List lengths N: a range (2-8) or a list (2,3,5), each {MIN_ITEMS}..{MAX_ITEMS}."):
    return click.option("--n-items", type=N_ITEMS, default=default, show_default=True, help=help)


def n_prompts_option(default: int | None, help: str, minimum: int = 1):
    """--n-prompts (default None: whatever the command's input says, e.g. a recipe's benchmark section)."""
    return click.option("--n-prompts", type=click.IntRange(min=minimum, max=MAX_PROMPTS), default=default,
                        show_default=default is not None, help=help)


def bench_size_option(help: str):
    """--bench quick|full: how large a benchmark a command runs (th_edit.recipe.sized_benchmark)."""
    return click.option("--bench", "bench", type=click.Choice(BENCH_SIZES), default="full", show_default=True, help=help)


def seed_option(help: str | None = None):
    return click.option("--seed", type=SEED, default=0, show_default=True, help=help)


def batch_size_option(help: str | None = None):
    return click.option("--batch-size", type=click.IntRange(min=1, max=MAX_BATCH_SIZE), default=16, show_default=True,
                        help=help)


def out_dir_option(help: str):
    """--out DIR: the directory a command writes its files into."""
    return click.option("--out", type=click.Path(file_okay=False, path_type=Path), help=help)


def force_option(help: str = "Replace existing output files."):
    return click.option("--force", is_flag=True, help=help)


def json_option(help: str):
    return click.option("--json", "as_json", is_flag=True, help=help)


def task_option(default: str | None, help: str, extra: tuple[str, ...] = ()):
    """--task: one of the registered tasks (th_edit.tasks.registry), plus `extra` choices ("all")."""
    return click.option("--task", type=click.Choice([*registry.names(), *extra]), default=default, show_default=True,
                        help=help)
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
