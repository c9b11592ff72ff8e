"""Write an edited checkpoint: atomically, deterministically, without holding the model twice.

Weights are streamed from the base checkpoint's safetensors files: untouched tensors are copied
byte for byte (or cast, when the recipe asks for another dtype), edited tensors come from the
edit. Everything goes into a hidden staging directory beside the target, which is renamed into
place only when complete, so an interrupted run never leaves a partial checkpoint at the target.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import torch

from th_edit import ui
from th_edit.checkpoint import (
    DTYPE_CODES,
    FLOAT_CODES,
    INDEX_FILE,
    CheckpointTensors,
    PendingTensor,
    StoredTensor,
    pending_copy,
    pending_from_tensor,
    write_checkpoint_weights,
)
from th_edit.compat import make_portable
from th_edit.errors import UserError

# Files of the base directory that are not carried over: weights (rewritten), the old model card
# and th-edit's own records (rewritten), and anything that could carry code or pickles.
SKIP_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".py", ".msgpack", ".h5", ".onnx")
SKIP_NAMES = {INDEX_FILE, "README.md", "recipe.yaml", "provenance.json", "th_edit_source.json", ".gitattributes"}
PARTIAL_MARK = ".partial-"


def check_target(target: Path, force: bool, protected: list[Path]) -> None:
    """Refuse before any heavy work: an existing target without --force, a target that is, lies
    inside or contains one of the `protected` inputs (the base model, the recipe: --force would
    delete them), or a place where no directory can be created."""
    resolved = target.resolve()
    for path in protected:
        path = path.resolve()
        if resolved == path or path in resolved.parents or resolved in path.parents:
            raise UserError(f"output directory {target} would overlap {path}, which this run reads; choose another")
    if target.exists() and not force:
        raise UserError(f"output directory {target} already exists (pass --force to replace it)")
    if target.exists() and not target.is_dir():
        raise UserError(f"output path {target} exists and is not a directory")
    check_creatable(target)


def check_creatable(path: Path) -> None:
    """A file or directory can be created at `path`: its nearest existing ancestor is a writable
    directory. Checked up front so a long run does not fail at its very end."""
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"cannot create {path}: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"cannot create {path}: {ancestor} is not writable")


@contextlib.contextmanager
def staging_directory(target: Path, force: bool) -> Iterator[Path]:
    """Yield an empty sibling directory; on success it replaces `target`, otherwise it is removed.

    SIGTERM is turned into an exception for the duration so that `kill` cleans up like Ctrl-C
    does; after `kill -9` the hidden staging directory is left beside the target (never at it)
    and removed by the next run for the same target.
    """
    staging = new_staging_dir(target)

    def on_term(signum, frame):  # noqa: ARG001
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, on_term) if _in_main_thread() else None
    try:
        yield staging
        _fsync_dir(staging)
        if target.exists():
            if not force:
                raise UserError(f"output directory {target} appeared while writing (pass --force to replace it)")
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            target.rename(retired / target.name)
            staging.rename(target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            staging.rename(target)
        _fsync_dir(target.parent)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def new_staging_dir(target: Path) -> Path:
    """An empty hidden sibling of `target`, named after it and this process, to be renamed into
    place when complete. Leftovers of killed runs (their process is gone) are removed first."""
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}{PARTIAL_MARK}{os.getpid()}-", dir=target.parent))
    staging.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the result should look like any directory
    return staging


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _remove_stale_partials(target: Path) -> None:
    for candidate in target.parent.glob(f".{target.name}{PARTIAL_MARK}*"):
        pid_text = candidate.name.split(PARTIAL_MARK, 1)[1].split("-", 1)[0]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)):
            shutil.rmtree(candidate, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _cast_copy(entry: StoredTensor, dtype: torch.dtype, tensors: CheckpointTensors) -> PendingTensor:
    """A stored float tensor converted to `dtype` when written (read one tensor at a time)."""
    out_itemsize = torch.empty((), dtype=dtype).element_size()

    def write(out: BinaryIO) -> None:
        tensor = tensors.get(entry.name).to(dtype)
        pending_from_tensor(entry.name, tensor).write_to(out)

    return PendingTensor(entry.name, DTYPE_CODES[dtype], entry.shape, entry.numel * out_itemsize, write)


def planned_weights(tensors: CheckpointTensors, replaced: dict[str, torch.Tensor], out_dtype: torch.dtype | None
                    ) -> list[PendingTensor]:
    """Every stored tensor, in the base's own order (so shards follow its layout), with edited
    tensors replaced and float tensors cast when an output dtype is set."""
    by_key = {tensors.resolve(name): tensor for name, tensor in replaced.items()}
    ordered = sorted(tensors.entries.values(), key=lambda e: (tensors.files.index(e.file), e.start))
    pending = []
    for entry in ordered:
        if entry.name in by_key:
            pending.append(pending_from_tensor(entry.name, by_key[entry.name]))
        elif out_dtype is not None and entry.dtype in FLOAT_CODES and entry.torch_dtype != out_dtype:
            pending.append(_cast_copy(entry, out_dtype, tensors))
        else:
            pending.append(pending_copy(entry))
    return pending


def write_weights(staging: Path, tensors: CheckpointTensors, replaced: dict[str, torch.Tensor],
                  out_dtype: torch.dtype | None, max_shard_bytes: int) -> dict[str, str]:
    """Write the weight files and return {file name: sha256}."""
    pending = planned_weights(tensors, replaced, out_dtype)
    progress = lambda groups: ui.progress(groups, desc="writing shards", unit="shard")  # noqa: E731
    return write_checkpoint_weights(staging, pending, max_shard_bytes, progress=progress)


def copy_side_files(base_dir: Path, staging: Path, out_dtype: torch.dtype | None) -> list[str]:
    """Config, generation config and tokenizer files, unchanged (config gets the new dtype)."""
    copied = []
    for path in sorted(base_dir.iterdir()):
        if not path.is_file() or path.name in SKIP_NAMES or path.name.endswith(SKIP_SUFFIXES):
            continue
        if path.name == "config.json" and out_dtype is not None:
            config = json.loads(path.read_text())
            name = str(out_dtype).removeprefix("torch.")
            for key in ("dtype", "torch_dtype"):
                if key in config:
                    config[key] = name
            config.setdefault("dtype", name)
            (staging / path.name).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        else:
            shutil.copyfile(path, staging / path.name)
        copied.append(path.name)
    make_portable(staging)  # config and tokenizer files that transformers 4.x reads the same way
    return copied
