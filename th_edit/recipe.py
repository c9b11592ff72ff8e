"""The YAML recipe: schema, parsing and validation.

A recipe's problems are reported all at once, one per line, each naming its field path:
  * YAML syntax (with line number) stops everything (there is nothing to check yet);
  * `validate_recipe` — the schema (types, unknown keys, ranges that need no model: 0 ≤ α ≤ 100,
    finite) and repeated components; edits that are valid on their own are kept for
  * `index_problems` — layer/head/component indices against the resolved base model.
`parse_recipe` raises the first two; `th-edit apply` (apply.prepare_file) adds the third before
raising, so a recipe with a bad scale and a bad layer reports both.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError, field_validator

from th_edit import strict_json
from th_edit.arch import Adapter
from th_edit.checkpoint import parse_size
from th_edit.errors import UserError
from th_edit.limits import MAX_BATCH_SIZE, MAX_KL_TEXTS, MAX_PROMPTS, MAX_SEED, shown_number
from th_edit.readers import parse_yaml, read_text
from th_edit.tasks import registry

NonNegativeInt = Annotated[StrictInt, Field(ge=0)]


def _registered_task(name: str) -> str:
    if name not in registry.names():
        raise ValueError(f"must be one of {', '.join(repr(n) for n in registry.names())}")
    return name


TaskName = Annotated[str, AfterValidator(_registered_task)]
OUTPUT_DTYPES = ("keep", "float32", "bfloat16", "float16")
# What `apply` can write (output.formats, `--format`): the safetensors checkpoint, the patched GGUF
# file of a GGUF base (th_edit.gguf_export), the edit as a PEFT LoRA adapter.
OUTPUT_FORMATS = ("safetensors", "gguf", "lora")
DEFAULT_FORMATS = ("safetensors",)
OutputFormat = Literal["safetensors", "gguf", "lora"]
# Largest scale a recipe may ask for. Useful edits are within ~0.25-4; 100 leaves room to explore
# while keeping the edited component from swamping the head in a 16-bit output dtype.
MAX_SCALE = 100.0


class _UserErrorOnCall(type(BaseModel)):
    """Built in Python (`Edit(scale=nan)`, the API), a bad value is the user's input like a bad recipe
    line: one UserError line naming each field, not pydantic's multi-line ValidationError. Only the
    call is wrapped (a metaclass, not __init__, which pydantic would also run inside model_validate,
    where a recipe file's problems are collected all at once)."""

    def __call__(cls, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except ValidationError as exc:
            problems = "; ".join(f"{field_path(e['loc'])} {_describe(e)}" for e in exc.errors())
            raise UserError(f"{cls.__name__}: {problems}") from None


class Strict(BaseModel, metaclass=_UserErrorOnCall):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Edit(Strict):
    """Scale singular components of one head's effective OV or QK matrix."""

    layer: NonNegativeInt
    head: NonNegativeInt
    circuit: Literal["ov", "qk"]
    components: Annotated[list[NonNegativeInt], Field(min_length=1)]
    scale: float

    @field_validator("circuit", mode="before")
    @classmethod
    def _any_case(cls, value: object) -> object:
        # Tables print OV and QK: a recipe may write them either way.
        return value.lower() if isinstance(value, str) else value

    @field_validator("scale")
    @classmethod
    def _finite_non_negative(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        if value < 0:
            raise ValueError("must be >= 0 (0 ablates the component)")
        if value > MAX_SCALE:
            raise ValueError(f"must be at most {MAX_SCALE:g}: beyond that the edited component swamps the head and "
                             "rounding in the output dtype damages the rest of it")
        return value

    @field_validator("scale", mode="before")
    @classmethod
    def _number_not_bool(cls, value: object) -> object:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError("must be a number")
        return value


class Output(Strict):
    dir: str | None = None
    dtype: Literal["keep", "float32", "bfloat16", "float16"] = "keep"
    max_shard_size: str | int = "5GB"
    formats: Annotated[list[OutputFormat], Field(min_length=1)] | None = None  # None: DEFAULT_FORMATS

    @field_validator("formats")
    @classmethod
    def _no_repeated_formats(cls, values: list[str] | None) -> list[str] | None:
        repeated = sorted({v for v in values or () if values.count(v) > 1})
        if repeated:
            raise ValueError(f"repeats {', '.join(repeated)}")
        return values

    @field_validator("max_shard_size", mode="before")
    @classmethod
    def _size(cls, value: object) -> str | int:
        # Checked before pydantic's union matching, whose errors would name each union member.
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise ValueError("must be a size such as 500MB or 2GB, or a byte count")
        try:
            parse_size(value)
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        return value

    @property
    def max_shard_bytes(self) -> int:
        return parse_size(self.max_shard_size)


class Benchmark(Strict):
    """Before/after benchmark run by `apply` (see `th-edit bench`); n_prompts is per N (and for IOI)."""

    tasks: list[TaskName] = Field(default_factory=lambda: list(registry.default_names()))
    n_items: Annotated[list[Annotated[StrictInt, Field(ge=2, le=10)]], Field(min_length=1)] = [2, 3, 4, 5, 6, 7, 8]
    n_prompts: Annotated[StrictInt, Field(ge=1, le=MAX_PROMPTS)] = 50
    batch_size: Annotated[StrictInt, Field(ge=1, le=MAX_BATCH_SIZE)] = 16
    seed: Annotated[StrictInt, Field(ge=0, le=MAX_SEED)] | None = None  # default: the recipe's seed
    kl: StrictBool = True  # the side effect on neutral text (false skips it: a third of the run)
    kl_texts: Annotated[StrictInt, Field(ge=1, le=MAX_KL_TEXTS)] | None = None  # that many neutral texts (default: all)
    # Free generation (completion and chat) and the side effects a user reads (bench --generation).
    generation: StrictBool = False

    @field_validator("tasks", "n_items")
    @classmethod
    def _no_repeats(cls, values: list) -> list:
        # A repeated N (or task) would score the same prompts twice and overstate the statistics.
        repeated = sorted({str(v) for v in values if values.count(v) > 1})
        if repeated:
            raise ValueError(f"repeats {', '.join(repeated)}")
        return values


# `apply --bench quick`: the recipe's benchmark at most this large (prompts per N and IOI, neutral
# texts for the KL), so that a first look at an edit takes about a minute on a laptop CPU. The
# recipe's tasks and N stay, so the table has the same rows, with wider intervals.
QUICK_PROMPTS = 30
QUICK_KL_TEXTS = 32
BENCH_SIZES = ("quick", "full")


def sized_benchmark(settings: Benchmark, bench: str = "full", n_prompts: int | None = None) -> Benchmark:
    """The recipe's benchmark section as `apply --bench` and `--n-prompts` size it (`verify` sizes it
    the same way from what provenance.json records). `full`: as the recipe says."""
    if bench not in BENCH_SIZES:
        raise ValueError(f"bench size must be one of {BENCH_SIZES}, not {bench!r}")
    changes: dict[str, object] = {}
    if bench == "quick":
        changes["n_prompts"] = min(settings.n_prompts, QUICK_PROMPTS)
        changes["kl_texts"] = min(settings.kl_texts or QUICK_KL_TEXTS, QUICK_KL_TEXTS)
    if n_prompts is not None:
        changes["n_prompts"] = n_prompts
    return settings.model_copy(update=changes)


class Recipe(Strict):
    base_model: str
    seed: Annotated[StrictInt, Field(ge=0, le=MAX_SEED)] = 0
    description: str | None = None
    edits: Annotated[list[Edit], Field(min_length=1)]
    output: Output = Output()
    benchmark: Benchmark | None = None

    @field_validator("base_model")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name a model")
        return value.strip()

    @classmethod
    def from_yaml(cls, path: str | Path) -> Recipe:
        """Read and validate a recipe file (the same checks as `th-edit apply`)."""
        return load_recipe(Path(path))[0]

    def to_yaml(self, path: str | Path | None = None, header: str | None = None) -> str:
        """The recipe as YAML that `from_yaml` reads back to an equal recipe; written to `path` if
        given. `header` becomes leading comment lines (e.g. the evidence behind the edits)."""
        data = self.model_dump(mode="json", exclude_none=True)
        data["edits"] = [_FlowMapping(edit) for edit in data["edits"]]  # one line per edit, as written by hand
        text = yaml.dump(data, Dumper=_RecipeDumper, sort_keys=False, default_flow_style=None, allow_unicode=True, width=120)
        if header:
            text = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines()) + text
        if path is not None:
            Path(path).write_text(text)
        return text


class _FlowMapping(dict):
    """A mapping written on one line ({layer: 20, head: 0, ...})."""


class _RecipeDumper(yaml.SafeDumper):
    pass


_RecipeDumper.add_representer(
    _FlowMapping, lambda dumper, data: dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=True))


def field_path(loc: tuple[int | str, ...]) -> str:
    """('edits', 2, 'components', 0) -> 'edits[2].components[0]'."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "recipe"


def _describe(error: dict) -> str:
    kind, message = error["type"], error["msg"]
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a recipe field (unknown key)"
    if kind == "too_short":
        return "must not be empty"
    message = message.removeprefix("Value error, ").replace("Input should be", "must be")
    got = error.get("input")
    if isinstance(got, int) and not isinstance(got, bool):
        message += f" (got {shown_number(str(got))})"  # a 4000-digit number would fill the screen
    elif isinstance(got, (str, float, bool)) or got is None:
        message += f" (got {got!r})"
    return message


class RecipeLoader(yaml.SafeLoader):
    """yaml.SafeLoader (plain data only, never objects), made stricter and YAML 1.2-like:
    a repeated key is an error (PyYAML silently keeps the last one, which would drop a whole
    `edits:` block), and `1e-3` is a number (YAML 1.1 reads it as a string)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                key = (key_node.tag, key_node.value)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"the key '{key_node.value}' appears twice", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


RecipeLoader.add_implicit_resolver(  # copies the resolver table for this class; SafeLoader is unchanged
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def parse_recipe(text: str, source: str = "recipe") -> Recipe:
    """The recipe in `text`, or a UserError listing every problem that needs no model."""
    validated = validate_recipe(recipe_data(text, source))
    if validated.problems:
        raise problems_error(source, validated.problems)
    assert validated.recipe is not None
    return validated.recipe


def recipe_data(text: str, source: str) -> dict:
    """The YAML mapping of a recipe (syntax errors name their line; see th_edit.readers)."""
    data = parse_yaml(text, source, RecipeLoader)
    if not isinstance(data, dict):
        raise UserError(f"{source}: a recipe is a YAML mapping with base_model, edits and output")
    return data


@dataclass
class Validated:
    """What a recipe's data gives without a model: the recipe (None if the schema fails), every
    problem found, and the edits that are valid on their own (with their index), for index checks."""

    recipe: Recipe | None
    problems: list[str]
    edits: list[tuple[int, Edit]]
    base_model: str | None


def validate_recipe(data: dict) -> Validated:
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        problems = [f"{field_path(e['loc'])} {_describe(e)}" for e in exc.errors()]
        edits = _valid_edits(data.get("edits"))
        base = data.get("base_model")
        return Validated(None, problems + _duplicate_problems(edits), edits,
                         base.strip() if isinstance(base, str) and base.strip() else None)
    edits = list(enumerate(recipe.edits))
    return Validated(recipe, _duplicate_problems(edits), edits, recipe.base_model)


def _valid_edits(raw: object) -> list[tuple[int, Edit]]:
    """The edits of a recipe that failed its schema that are valid on their own."""
    edits = []
    for i, item in enumerate(raw if isinstance(raw, list) else []):
        try:
            edits.append((i, Edit.model_validate(item)))
        except ValidationError:
            continue  # its problems are already listed
    return edits


def problems_error(source: str, problems: list[str]) -> UserError:
    """Every problem of a recipe at once, one per line, the first on the error line itself."""
    lines = [f"{source}: {problem}" for problem in problems]
    return UserError("\n".join([lines[0], *(f"  {line}" for line in lines[1:])]))


def replace_values(text: str, replacements: dict[tuple[str, ...], str]) -> str:
    """The recipe text with the scalar at each key path (e.g. ("output", "dir")) replaced by a
    new string, everything else (comments, layout) byte for byte unchanged."""
    root = yaml.compose(text, Loader=RecipeLoader)  # noqa: S506 - a SafeLoader subclass
    spans: list[tuple[int, int, str]] = []
    for path, value in replacements.items():
        node = root
        for key in path:
            node = next((v for k, v in getattr(node, "value", []) if isinstance(node, yaml.MappingNode)
                         and isinstance(k, yaml.ScalarNode) and k.value == key), None)
        if isinstance(node, yaml.ScalarNode):
            spans.append((node.start_mark.index, node.end_mark.index, strict_json.dumps(value, ensure_ascii=False)))
    for start, end, new in sorted(spans, reverse=True):
        text = text[:start] + new + text[end:]
    return text


def load_recipe(path: Path) -> tuple[Recipe, str]:
    """The validated recipe and its verbatim text (saved with the checkpoint)."""
    validated, text = read_recipe(path)
    if validated.problems:
        raise problems_error(str(path), validated.problems)
    assert validated.recipe is not None
    return validated.recipe, text


def read_recipe(path: Path) -> tuple[Validated, str]:
    """A recipe file checked as far as it can be without a model, and its verbatim text."""
    if not path.exists():
        raise UserError(f"recipe file not found: {path}")
    text = read_text(path)
    return validate_recipe(recipe_data(text, str(path))), text


def _duplicate_problems(edits: list[tuple[int, Edit]]) -> list[str]:
    seen: dict[tuple[int, int, str, int], int] = {}
    problems = []
    for i, edit in edits:
        for j, component in enumerate(edit.components):
            key = (edit.layer, edit.head, edit.circuit, component)
            if key in seen:
                problems.append(f"edits[{i}].components[{j}] repeats edits[{seen[key]}] "
                                f"(layer {edit.layer}, head {edit.head}, {edit.circuit}, component {component})")
            seen.setdefault(key, i)
    return problems


def check_against_model(recipe: Recipe, adapter: Adapter, source: str = "recipe") -> None:
    """Indices must exist in this model (see index_problems)."""
    problems = index_problems(list(enumerate(recipe.edits)), adapter)
    if problems:
        raise problems_error(source, problems)


def index_problems(edits: list[tuple[int, Edit]], adapter: Adapter) -> list[str]:
    """Layer, head and component indices this model does not have. Components count the head's
    singular values (≤ d_head)."""
    info = adapter.info()
    problems = []
    for i, edit in edits:
        if edit.layer >= info.n_layers:
            problems.append(f"edits[{i}].layer {edit.layer} is out of range: the model has layers 0..{info.n_layers - 1}")
        if edit.head >= info.n_heads:
            problems.append(f"edits[{i}].head {edit.head} is out of range: "
                            f"the model has heads 0..{info.n_heads - 1} per layer")
        for j, component in enumerate(edit.components):
            if component >= info.d_head:
                problems.append(f"edits[{i}].components[{j}] {component} is out of range: a head's "
                                f"{edit.circuit.upper()} has components 0..{info.d_head - 1} (rank <= d_head = {info.d_head})")
    return problems
