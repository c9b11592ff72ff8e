"""Benchmark tasks (laundry-list recall, IOI, ...) in a registry (`registry`), and neutral text for side effects.

Each task module registers its `registry.Task` when imported; the lines below are the registration.
"""

from th_edit.tasks import (  # noqa: F401  (registers the tasks; ioi imports laundry, so laundry is first)
    ioi,
    laundry,
    people,  # noqa: F401
    places,  # noqa: F401
)
from th_edit.tasks.prompts import TaskPrompt, read_jsonl, write_jsonl
from th_edit.tasks.registry import Task, default_names, get, names

TASKS = default_names()  # the default set: `bench --task all`, a recipe's benchmark

__all__ = ["TASKS", "Task", "TaskPrompt", "default_names", "get", "names", "read_jsonl", "write_jsonl"]
