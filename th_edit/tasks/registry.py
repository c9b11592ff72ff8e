"""The benchmark tasks, registered like the architecture adapters (`th_edit.arch`).

Everything outside `th_edit.tasks` that depends on which task a prompt belongs to asks the task's
`Task` record here instead of testing the task's name: how its prompts are generated (and split
between a search's tuning and held-out sets), how its rows are labelled in reports ("N=5" for a
list, "ioi" for IOI, positions "p0" or "ABBA"), what its setup record adds, and which mentions its
head roles read. A new task is one module that builds a `Task` and calls `register`, plus its
import line in `th_edit/tasks/__init__.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from th_edit.errors import UserError

# (tokenizer, n_items, n_prompts, seed, split) -> prompts; split: None (every frame or template),
# "tuning" or "held_out" (disjoint parts, so that a search's held-out judgement uses phrasings it never saw).
Generator = Callable[[object, Sequence[int], int, int, "str | None"], list]
SPLITS = ("tuning", "held_out")


@dataclass(frozen=True)
class Task:
    name: str
    description: str  # for --help and messages: "laundry-list recall"
    generate: Generator
    # A list-recall task: N items (n_items varies, rows per N), the one never mentioned again is the answer.
    # Otherwise the task has one fixed N (`fixed_n_items`) and is reported as one row named after the task.
    list_recall: bool = True
    fixed_n_items: int | None = None
    position_names: tuple[str, ...] | None = None  # answer positions by name (IOI: ABBA, BABA); else p0, p1, ...
    # In the default set (`bench --task all`, a recipe's benchmark, a search): a new task starts outside it,
    # so adding one changes no existing report.
    default: bool = False
    # A capability an edit must keep (IOI: the search's guard), rather than the recall it aims to improve.
    guard: bool = False
    # Extra entries of a report's `setup` for generated prompts (laundry: its lexicon per frame).
    setup_record: Callable[[object], dict[str, object]] = lambda tokenizer: {}
    # Status lines when prompts are generated (how much of the lexicon the tokenizer left).
    announce: Callable[[object, Sequence[int]], None] = lambda tokenizer, n_items: None
    # The fixed split of frames or templates: {"tuning": (...), "held_out": (...)} (names or indices),
    # and how a search records it in search.json (key -> value).
    splits: Mapping[str, tuple] = field(default_factory=dict)
    split_record: Mapping[str, tuple] = field(default_factory=dict)
    # Head roles read on this task's prompts (channels): the channel role -> this task's name for it.
    role_names: Mapping[str, str] = field(default_factory=lambda: {"inhibition": "inhibition", "mover": "mover"})
    # The prompt asked as a chat user turn (bench's chat metric); default: answers.chat_question.
    chat_question: Callable[[object], str] | None = None

    def label(self, n_items: object) -> str:
        """A report row: "N=5" for a list task, the task's name for a fixed-N task."""
        return f"N={n_items}" if self.list_recall else self.name

    def ask_in_chat(self, prompt) -> str:
        from th_edit.tasks.answers import chat_question

        return (self.chat_question or chat_question)(prompt)

    def position_name(self, position: int) -> str:
        return self.position_names[position] if self.position_names else f"p{position}"

    def prompts(self, tokenizer, n_items: Sequence[int], n_prompts: int, seed: int,
                split: str | None = None) -> list:
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
        return self.generate(tokenizer, n_items, n_prompts, seed, split)


_REGISTRY: dict[str, Task] = {}


def register(task: Task) -> Task:
    if task.name in _REGISTRY:
        raise ValueError(f"task {task.name!r} is registered twice")
    _REGISTRY[task.name] = task
    return task


def names() -> tuple[str, ...]:
    """Every registered task, in registration order (the order reports list them in)."""
    return tuple(_REGISTRY)


def default_names() -> tuple[str, ...]:
    return tuple(name for name, task in _REGISTRY.items() if task.default)


def get(name: str) -> Task:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown task {name!r}: tasks are {', '.join(names())}") from None


def all_tasks() -> list[Task]:
    return list(_REGISTRY.values())


def objective() -> Task:
    """The list-recall task edits are searched for (the first default non-guard task)."""
    return next(t for t in _REGISTRY.values() if t.default and not t.guard)


def guards() -> list[Task]:
    """The default tasks an edit must not break (IOI)."""
    return [t for t in _REGISTRY.values() if t.default and t.guard]


def transfer_forms() -> list[Task]:
    """List-recall tasks outside the default set: the objective's recall in other surface forms (people,
    places, other phrasings), which no search tunes on — where a search's chosen recipe is judged for
    transfer to forms it never saw."""
    return [t for t in _REGISTRY.values() if t.list_recall and not t.default and not t.guard]


def in_order(task_names: Sequence[str] | set[str]) -> list[str]:
    """`task_names` in registration order."""
    present = set(task_names)
    return [name for name in _REGISTRY if name in present]
