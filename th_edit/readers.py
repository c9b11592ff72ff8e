"""The one reader of the JSON and YAML files users hand th-edit (recipes, checkpoint files,
provenance records, channels.json): every way such a file can be unreadable (missing, not UTF-8,
bad syntax, nested so deeply that a parser or a later recursive step overflows the stack) is one
UserError line that names the file, never a traceback.

No file th-edit reads nests anywhere near MAX_NESTING levels (tokenizer.json, the deepest, has
about 6). A document deeper than that is refused even when the parser itself copes with it:
Python's json module parses up to ~990 levels, but transformers' config code, json.dumps and the
tokenizers library (which stops at 128) would then fail on it later, far from the file's name.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from th_edit.errors import UserError

MAX_NESTING = 100


def read_text(path: Path) -> str:
    """A UTF-8 text file's contents."""
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, not a file") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or type(exc).__name__})") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: {_not_utf8(exc)}") from None


def check_utf8(data: bytes, source: object) -> str:
    """`data` decoded as UTF-8 (a chat template, a vocabulary), or one line naming `source`."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{source}: {_not_utf8(exc)}") from None


def decode_json(text: str | bytes) -> object:
    """Parse one JSON document; ValueError with a short reason (no file name) when it is not one.
    For callers that name the place themselves (a line of a JSONL file, a safetensors header)."""
    try:
        value = json.loads(text.decode("utf-8") if isinstance(text, bytes) else text)
    except UnicodeDecodeError as exc:
        raise ValueError(_not_utf8(exc)) from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise ValueError("invalid JSON (nested too deeply)") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise ValueError(f"invalid JSON ({str(exc).splitlines()[0]})") from None
    if _deeper_than(value, MAX_NESTING):
        raise ValueError("invalid JSON (nested too deeply)")
    return value


def parse_json(text: str | bytes, source: object) -> object:
    """decode_json, with a failure reported as one line naming `source` (a path, usually)."""
    try:
        return decode_json(text)
    except ValueError as exc:
        raise UserError(f"{source}: {exc}") from None


def read_json(path: Path) -> object:
    return parse_json(read_text(path), path)


def read_json_object(path: Path) -> dict:
    """A JSON file whose top level must be an object (every JSON file of a checkpoint is one)."""
    value = read_json(path)
    if not isinstance(value, dict):
        raise UserError(f"{path}: expected a JSON object, got {_json_kind(value)}")
    return value


def parse_yaml(text: str, source: object, loader: type[yaml.SafeLoader]) -> object:
    """Parse YAML with `loader` (a SafeLoader: plain data only), or one line naming `source`."""
    try:
        value = yaml.load(text, Loader=loader)  # noqa: S506 - a SafeLoader (sub)class
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{source}{where}: malformed YAML: {problem}") from None
    except RecursionError:
        raise UserError(f"{source}: malformed YAML: nested too deeply") from None
    except ValueError as exc:  # a scalar the constructors cannot convert: an integer of more than 4300 digits, say
        raise UserError(f"{source}: malformed YAML: {_value_problem(exc)}") from None
    if _deeper_than(value, MAX_NESTING):
        raise UserError(f"{source}: malformed YAML: nested too deeply")
    return value


def _deeper_than(value: object, limit: int) -> bool:
    """Whether lists and mappings nest more than `limit` levels in `value`.

    Level by level, without recursion (the check must not overflow the stack itself). YAML aliases
    can share one container under many parents, or put a container inside itself: each container
    is expanded once per level at most (so shared ones do not multiply the work), and a cycle is
    infinitely deep, so it runs past the limit."""
    level, seen, depth = [value], set(), 0
    while level:
        depth += 1
        if depth > limit:
            return True
        deeper = []
        for node in level:
            if id(node) in seen:
                continue
            seen.add(id(node))
            for child in node.values() if isinstance(node, dict) else node if isinstance(node, list) else ():
                if isinstance(child, (dict, list)):
                    deeper.append(child)
        level, seen = deeper, set()
    return False


def _value_problem(exc: ValueError) -> str:
    """The first sentence of a converter's complaint, without its advice to the programmer
    (Python's int() suggests sys.set_int_max_str_digits())."""
    return str(exc).splitlines()[0].split(";")[0] if str(exc).strip() else type(exc).__name__


def _not_utf8(exc: UnicodeDecodeError) -> str:
    return f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"


def _json_kind(value: object) -> str:
    kinds = {list: "an array", str: "a string", bool: "true or false", type(None): "null"}
    return kinds.get(type(value), "a number")
