"""Benchmark prompt sets: laundry-list recall, IOI, and neutral text for side effects."""

from th_edit.tasks.prompts import TASKS, TaskPrompt, read_jsonl, write_jsonl

__all__ = ["TASKS", "TaskPrompt", "read_jsonl", "write_jsonl"]
