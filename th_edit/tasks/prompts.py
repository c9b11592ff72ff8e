"""One benchmark prompt, and its JSONL file format.

A prompt stops right before the answer; the answer and every candidate are written exactly as
they would follow the prompt (leading space included), so the first token of each is the token
the model must predict next. Generated prompts list `candidates` in order of first mention, so
`candidates[answer_position] == answer`; files written by hand only need the documented rules.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from th_edit import strict_json
from th_edit.errors import UserError
from th_edit.readers import decode_json, read_text

REQUIRED_KEYS = ("task", "prompt", "answer", "candidates", "n_items", "answer_position")
OPTIONAL_KEYS = ("template",)


@dataclass(frozen=True)
class TaskPrompt:
    task: str
    prompt: str
    answer: str
    candidates: tuple[str, ...]
    n_items: int
    answer_position: int
    template: str | None = None
    # The prompt file line it was read from, so later checks (tokenization) can point at it.
    # Not part of the prompt: ignored by ==, never written by write_jsonl.
    line: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        problem = _consistency_problem(self)
        if problem:
            raise ValueError(problem)


def _consistency_problem(p: TaskPrompt) -> str | None:
    """The first rule `p` breaks, phrased for a user reading their own file; None if it is valid."""
    from th_edit.tasks import registry  # the task modules import this one

    if p.task not in registry.names():
        return f"'task' must be one of {', '.join(repr(t) for t in registry.names())}, not {p.task!r}"
    fixed = registry.get(p.task).fixed_n_items
    if not p.prompt:
        return "'prompt' is empty"
    if p.prompt != p.prompt.rstrip():
        # The answer token carries its own leading space; a trailing one would be tokenized twice.
        return "'prompt' ends with whitespace (the answer and candidates carry the leading space)"
    if any(not c for c in p.candidates):
        return "'candidates' contains an empty string"
    if len(set(p.candidates)) != len(p.candidates):
        return "'candidates' contains duplicates"
    if p.answer not in p.candidates:
        return "'answer' is not one of 'candidates'"
    if p.n_items < 2:
        return f"'n_items' must be at least 2, not {p.n_items}"
    if fixed is not None and p.n_items != fixed:
        return f"'n_items' must be {fixed} for the {p.task} task, not {p.n_items}"
    if len(p.candidates) != p.n_items:
        return f"'candidates' has {len(p.candidates)} items but 'n_items' is {p.n_items}"
    if not 0 <= p.answer_position < p.n_items:
        return f"'answer_position' must be in 0..{p.n_items - 1}, not {p.answer_position}"
    return None


# ----------------------------------------------------------------------------------------------
# JSONL


def prompt_to_record(prompt: TaskPrompt) -> dict[str, object]:
    record = asdict(prompt)
    record["candidates"] = list(prompt.candidates)
    del record["line"]
    if record["template"] is None:
        del record["template"]
    return record


def write_jsonl(prompts: Iterable[TaskPrompt], path: str | Path) -> None:
    lines = [strict_json.dumps(prompt_to_record(p), ensure_ascii=False) + "\n" for p in prompts]
    Path(path).write_text("".join(lines), encoding="utf-8")


def read_jsonl(path: str | Path) -> list[TaskPrompt]:
    """Read and validate a prompt file; any problem is a one-line UserError naming file and line."""
    text = read_text(Path(path))
    prompts = []
    # Only "\n" ends a line: str.splitlines() would also split on U+2028, U+2029 or U+0085, which
    # write_jsonl leaves raw inside JSON strings (ensure_ascii=False).
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():  # blank lines (a trailing one, say) carry no record
            continue
        try:
            prompts.append(_parse_record(line, number))
        except ValueError as exc:
            raise UserError(f"{path} line {number}: {exc}") from None
    if not prompts:
        raise UserError(f"{path}: contains no prompts")
    return prompts


def _parse_record(line: str, number: int) -> TaskPrompt:
    record = decode_json(line)  # a ValueError saying why not; the caller names the file and line
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        raise ValueError(f"missing key {', '.join(repr(k) for k in missing)}")
    unknown = sorted(set(record) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        raise ValueError(f"unknown key {', '.join(repr(k) for k in unknown)}")
    for key in ("task", "prompt", "answer"):
        _expect(record, key, str, "a string")
    for key in ("n_items", "answer_position"):
        _expect(record, key, int, "an integer")
    candidates = record["candidates"]
    if not isinstance(candidates, list) or not all(isinstance(c, str) for c in candidates):
        raise ValueError("'candidates' must be a list of strings")
    template = record.get("template")
    if template is not None and not isinstance(template, str):
        raise ValueError("'template' must be a string or null")
    return TaskPrompt(record["task"], record["prompt"], record["answer"], tuple(candidates),
                      record["n_items"], record["answer_position"], template, line=number)


def _expect(record: dict, key: str, kind: type, description: str) -> None:
    value = record[key]
    # bool is a subclass of int, but `true` is never a valid count or position.
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"'{key}' must be {description}, got {strict_json.shown(value)}")


def tasks_in(prompts: Sequence[TaskPrompt]) -> list[str]:
    """The tasks present, in the canonical (registration) order."""
    from th_edit.tasks import registry

    return registry.in_order({p.task for p in prompts})
