"""Write an edited checkpoint: atomically, deterministically, without holding the model twice.

Weights are streamed from the base checkpoint's safetensors files: untouched tensors are copied
byte for byte (or cast, when the recipe asks for another dtype), edited tensors come from the
edit. Everything goes into a hidden staging directory beside the target, which is renamed into
place only when complete, so an interrupted run never leaves a partial checkpoint at the target.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import torch

from th_edit import strict_json, ui
from th_edit.checkpoint import (
    DTYPE_CODES,
    FLOAT_CODES,
    INDEX_FILE,
    SINGLE_FILE,
    CheckpointTensors,
    PendingTensor,
    StoredTensor,
    pending_copy,
    pending_from_tensor,
    shard_groups,
    stream_safetensors,
    write_checkpoint_weights,
)
from th_edit.compat import base_json, portable_file
from th_edit.errors import UserError
from th_edit.lora import ADAPTER_DIR, ADAPTER_FILES
from th_edit.outputs import (
    PARTIAL_MARK,
    check_creatable,
    check_utf8_name,
    exchange,
    fsync_path,
    leftover_pid,
    make_parents,
    pid_alive,
    remove_empty,
    remove_stale_partials,
    rename_noreplace,
    sigterm_as_exit,
    umask,
    write_error,
)
from th_edit.readers import check_utf8, parse_json, read_json

# What a checkpoint needs besides its weights, and nothing else: an allow-list, so that no dotfile,
# secret, script or pickle of a local base directory ever reaches an output (or, through push, the Hub).
SIDE_FILES = (
    "config.json", "generation_config.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model",
    "chat_template.jinja", "chat_template.json",
)
# The side files that are text (the *.json ones are JSON objects; the *.model ones are binary).
TEXT_SIDE_FILES = ("vocab.txt", "merges.txt", "chat_template.jinja")
OLD_MARK = ".old-"
PROVENANCE_FILE = "provenance.json"
RECIPE_FILE = "recipe.yaml"
CARD_FILE = "README.md"
BENCHMARK_PLOT = "benchmark.png"
# The files apply writes itself, besides weights, SIDE_FILES and provenance.json.
OWN_FILES = (RECIPE_FILE, CARD_FILE, BENCHMARK_PLOT)
MODELFILE = "Modelfile"  # ollama's, beside a GGUF output (th_edit.gguf_export)
# The card of the GGUF repo when the output also holds the safetensors checkpoint (whose card is
# README.md); `push --format gguf` uploads it as the repo's README.md.
GGUF_CARD = "README.gguf.md"
_GGUF_FILE = re.compile(r"[^/\\]+\.gguf")


def is_gguf_output(name: str) -> bool:
    """A file name the GGUF output may write beside the checkpoint (provenance may list it: push,
    --force and verify accept it, hash-checked like the others)."""
    return name in (MODELFILE, GGUF_CARD) or bool(_GGUF_FILE.fullmatch(name))
# The shard names checkpoint.write_checkpoint_weights gives (and its index lists).
SHARD_NAME = re.compile(r"model-(\d{5})-of-(\d{5})\.safetensors")
# Where a local base is on this machine, for verify: beside the checkpoint but never published
# (push uploads only the files provenance.json lists, and this one is not among them).
LOCAL_RECORD = ".th-edit-local.json"


# ----------------------------------------------------------------------------------------------
# The target directory: what may be replaced, and checks made before any work


def check_target(target: Path, force: bool, protected: list[Path]) -> None:
    """Refuse before any heavy work: an existing target without --force; with --force, anything
    but an earlier th-edit checkpoint or an empty directory; a target that is, lies inside or
    contains one of the `protected` inputs (the base model, the recipe) or the current
    directory; a symbolic link; a name that is not UTF-8; a place where nothing can be created.
    Leftovers of an interrupted replacement of this target are repaired first."""
    check_utf8_name(target)
    resolved = target.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise UserError(f"output directory {target} is or contains the current directory; choose another")
    for path in protected:
        path = path.resolve()
        if resolved == path or path in resolved.parents or resolved in path.parents:
            raise UserError(f"output directory {target} would overlap {path}, which this run reads; choose another")
    if target.is_symlink():
        raise UserError(f"output path {target} is a symbolic link; give the directory it points to, or another name")
    recover_interrupted(target)
    if target.exists():
        if not force:
            raise UserError(f"output directory {target} already exists (pass --force to replace it)")
        if not target.is_dir():
            raise UserError(f"output path {target} exists and is not a directory")
        check_replaceable(target)
    check_creatable(target)


def th_edit_record(directory: Path) -> dict | None:
    """The provenance record in `directory` when th-edit wrote it (tool: th-edit), else None (the
    caller says so in its own words). A provenance.json that cannot be read is a UserError naming
    what is wrong with it."""
    path = directory / PROVENANCE_FILE
    if not path.is_file():
        return None
    record = read_json(path)
    return record if isinstance(record, dict) and record.get("tool") == "th-edit" else None


def is_checkpoint(directory: Path) -> bool:
    """An earlier output of th-edit: provenance.json written by th-edit, and recipe.yaml."""
    return th_edit_record(directory) is not None and (directory / RECIPE_FILE).is_file()


def checkpoint_files(directory: Path, record: dict) -> dict[str, str]:
    """{name: sha256} of the files of the checkpoint in `directory` by its provenance `record`:
    the weights (model.safetensors alone, or the index and exactly the shards it names) and the
    files apply writes beside them; provenance.json itself is not among them. Whatever else the
    record names is refused (UserError): a doctored record must neither make push upload nor
    --force delete a file that th-edit never wrote."""
    provenance = directory / PROVENANCE_FILE
    for key in ("weights_sha256", "files_sha256"):
        if not isinstance(record.get(key), dict):
            raise UserError(f"{provenance}: field '{key}' is missing (written by an older th-edit: apply the recipe again)")
    weights, files = record["weights_sha256"], record["files_sha256"]
    for listed, allowed in ((files, {*SIDE_FILES, *OWN_FILES, *ADAPTER_FILES}),
                            (weights, weight_names(directory, provenance, set(weights)))):
        for name, digest in sorted(listed.items()):
            extra = listed is files and is_gguf_output(name)  # the GGUF output and its Modelfile
            if (name not in allowed and not extra) or not isinstance(digest, str):
                raise UserError(f"{provenance}: '{name}' is not a file name apply writes")
    if any(name.startswith(f"{ADAPTER_DIR}/") for name in files) and (directory / ADAPTER_DIR).is_symlink():
        raise UserError(f"{directory / ADAPTER_DIR} is a symbolic link; apply writes a directory there")
    return {**files, **weights}


def weight_names(directory: Path, provenance: Path, listed: set[str]) -> set[str]:
    """The weight files a checkpoint whose provenance lists `listed` may hold: model.safetensors
    alone, or the index with exactly the shards the index names."""
    if INDEX_FILE not in listed:
        return {SINGLE_FILE}
    shards = index_shards(directory, provenance)
    if not shards <= listed:
        raise UserError(f"{provenance}: weights_sha256 does not list the shard '{sorted(shards - listed)[0]}' "
                        f"that {INDEX_FILE} names")
    return {INDEX_FILE, *shards}


def index_shards(directory: Path, provenance: Path) -> set[str]:
    """The shard names the checkpoint's index gives, each one apply could have written."""
    index = directory / INDEX_FILE
    try:
        weight_map = read_json(index)["weight_map"]
    except (UserError, TypeError, KeyError):
        raise UserError(f"{provenance} lists sharded weights, but {index} is missing or not an index") from None
    values = list(weight_map.values()) if isinstance(weight_map, dict) else [weight_map]
    shards = {value for value in values if isinstance(value, str)}
    for shard in values:
        match = SHARD_NAME.fullmatch(shard) if isinstance(shard, str) else None
        if match is None or not 1 <= int(match[1]) <= int(match[2]) == len(shards):
            raise UserError(f"{index}: {shard!r} is not a shard name apply writes")
    return shards


def check_replaceable(target: Path) -> None:
    """--force replaces only what th-edit wrote: an earlier checkpoint (which has no
    subdirectories and nothing its provenance does not list) or an empty directory. Anything
    else may be someone's data: notes or a .env added to an old checkpoint are never deleted."""
    entries = list(target.iterdir())
    if not entries:
        return
    record = th_edit_record(target)
    if record is None or not (target / RECIPE_FILE).is_file():
        raise UserError(f"--force refuses to replace {target}: it is not a th-edit checkpoint (no provenance.json "
                        "from th-edit beside a recipe.yaml) nor an empty directory")
    subdirectories = sorted(p.name for p in entries if p.is_dir() and not p.is_symlink() and p.name != ADAPTER_DIR)
    if subdirectories:
        raise UserError(f"--force refuses to replace {target}: it contains the directory '{subdirectories[0]}', "
                        "which th-edit never writes; move it away first")
    try:
        ours = {*checkpoint_files(target, record), PROVENANCE_FILE, LOCAL_RECORD}
    except UserError as exc:
        raise UserError(f"--force refuses to replace {target}: {exc}") from None
    others = sorted(name for name in output_names(target) if name not in ours)
    if others:
        raise UserError(f"--force refuses to replace {target}: it holds '{others[0]}', which th-edit did not write "
                        "(not listed in its provenance.json); move it away first")


def output_names(directory: Path) -> list[str]:
    """The entries of an output directory as provenance.json names them: the files of its adapter/
    directory (the only subdirectory apply writes) as adapter/<name>, and every other entry by its name."""
    names = []
    for entry in sorted(directory.iterdir()):
        if entry.name == ADAPTER_DIR and entry.is_dir() and not entry.is_symlink():
            names += [f"{ADAPTER_DIR}/{inner.name}" for inner in sorted(entry.iterdir())]
        else:
            names.append(entry.name)
    return names


def recover_interrupted(target: Path) -> None:
    """Repair what a run killed during a --force replacement left beside `target` (see
    `staging_directory`): the previous checkpoint, moved aside, is put back when the target is
    missing and removed otherwise. Staging directories of dead runs are removed too."""
    import glob

    remove_stale_partials(target)
    for leftover in sorted(target.parent.glob(f".{glob.escape(target.name)}{OLD_MARK}*")):
        pid = leftover_pid(leftover, OLD_MARK)
        if pid is not None and pid_alive(pid):
            continue  # a replacement in progress
        checkpoint = leftover
        if pid is None and (leftover / target.name).is_dir():  # the layout of th-edit 0.1.0: .<name>.old-*/<name>
            checkpoint = leftover / target.name
        if not os.path.lexists(target) and is_checkpoint(checkpoint):
            checkpoint.rename(target)
            ui.warn(f"restored {target}: an earlier --force replacement of it was interrupted")
            if checkpoint == leftover:
                continue
        if leftover.is_dir() and (is_checkpoint(checkpoint) or not any(leftover.iterdir())):
            shutil.rmtree(leftover, ignore_errors=True)  # anything else in it is left alone


# ----------------------------------------------------------------------------------------------
# Writing into place


@contextlib.contextmanager
def staging_directory(target: Path, force: bool) -> Iterator[Path]:
    """Yield an empty sibling directory; on success it takes the place of `target`, otherwise it
    is removed. SIGTERM cleans up like Ctrl-C; after `kill -9` the hidden staging directory
    stays beside the target (never at it) and the next run for that target removes it.
    An OSError (a full disk) is one line, and nothing is left behind."""
    created = _make_parents_or_fail(target)
    try:
        staging = new_staging_dir(target)
    except OSError as exc:  # a full disk can refuse even an empty directory
        remove_empty(created)
        raise write_error(target, exc) from None
    placed = False
    with sigterm_as_exit():
        try:
            yield staging
            fsync_path(staging)
            _put_in_place(staging, target, force)
            placed = True
            fsync_path(target.parent)
        except OSError as exc:
            raise write_error(target, exc) from None
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
            if not placed:
                remove_empty(created)


def _make_parents_or_fail(target: Path) -> list[Path]:
    try:
        return make_parents(target.parent)
    except OSError as exc:
        raise write_error(target, exc) from None


def _put_in_place(staging: Path, target: Path, force: bool) -> None:
    """Move the complete `staging` directory to `target`.

    A new target is one atomic rename that never replaces anything. An existing one (--force)
    is swapped with the staging directory in one atomic step where the system can (Linux
    renameat2 RENAME_EXCHANGE): at every instant the target holds the old or the new
    checkpoint, and the old one, now in the staging directory, is removed afterwards. Elsewhere
    it takes two renames, target -> .<name>.old-<pid>-* and staging -> target; a crash between
    them is repaired by the next run (`recover_interrupted` puts the old checkpoint back).
    """
    if not os.path.lexists(target):
        try:
            rename_noreplace(staging, target)
            return
        except FileExistsError:
            pass  # created meanwhile, by another run: treated as an existing target
    if not force:
        raise UserError(f"output directory {target} appeared while writing (pass --force to replace it)")
    lost_race = UserError(f"another run replaced {target} at the same time; its result is in place, "
                          "run again to replace it with this one")
    retired = None
    try:
        check_replaceable(target)  # again: the run was long, and the directory may have changed
        if exchange(staging, target):
            return  # the old checkpoint is now in `staging`, which the caller removes
        retired = Path(tempfile.mkdtemp(prefix=f".{target.name}{OLD_MARK}{os.getpid()}-", dir=target.parent))
        os.rename(target, retired)  # replaces the empty placeholder mkdtemp made
        rename_noreplace(staging, target)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
            raise lost_race from None
        raise
    finally:
        # Success, or another run's checkpoint in place: the old one goes. Failed or interrupted
        # (Ctrl-C, kill) between the two renames: the old one goes back.
        if retired is not None and retired.exists():
            if not os.path.lexists(target) and is_checkpoint(retired):
                os.rename(retired, target)
            else:
                shutil.rmtree(retired, ignore_errors=True)


def new_staging_dir(target: Path) -> Path:
    """An empty hidden sibling of `target`, named after it and this process, to be renamed into
    place when complete. Leftovers of killed runs (their process is gone) are removed first."""
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}{PARTIAL_MARK}{os.getpid()}-", dir=target.parent))
    staging.chmod(0o777 & ~umask())  # mkdtemp makes it private; the result should look like any directory
    return staging


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


def hash_weights(tensors: CheckpointTensors, replaced: dict[str, torch.Tensor], out_dtype: torch.dtype | None,
                 max_shard_bytes: int) -> dict[str, str]:
    """{file name: sha256} of exactly what `write_weights` would write, computed from the
    streamed bytes without writing anything (verify works on read-only checkpoints and leaves
    no scratch copy behind). Mirrors checkpoint.write_checkpoint_weights (one safetensors writer, stream_safetensors);
    tests/test_verify_and_atomic.py checks that both give the same hashes, sharded or not."""
    pending = planned_weights(tensors, replaced, out_dtype)
    groups = shard_groups(pending, max_shard_bytes)
    metadata = {"format": "pt"}
    if len(groups) == 1:
        return {SINGLE_FILE: stream_safetensors(None, groups[0], metadata)}
    hashes, weight_map = {}, {}
    for i, group in enumerate(ui.progress(groups, desc="hashing rebuilt shards", unit="shard"), start=1):
        name = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        hashes[name] = stream_safetensors(None, group, metadata)
        weight_map.update({t.name: name for t in group})
    index = {"metadata": {"total_size": sum(t.nbytes for t in pending)}, "weight_map": dict(sorted(weight_map.items()))}
    hashes[INDEX_FILE] = hashlib.sha256((strict_json.dumps(index, indent=2) + "\n").encode()).hexdigest()
    return hashes


def side_file_root(base_dir: Path, kind: str) -> Path:
    """The directory a side file may really live in: the base directory itself, or for a hub
    snapshot (whose files link into the repo's blobs/) the repo's cache folder."""
    return base_dir.parent.parent if kind == "hub" else base_dir


def side_file_sources(base_dir: Path, root: Path) -> dict[str, Path]:
    """{name: file to read} for the allow-listed files present in the base directory. A link
    that leads out of `root`, or anything that is not a regular file, is refused."""
    root = root.resolve()
    sources = {}
    for name in SIDE_FILES:
        path = base_dir / name
        if not os.path.lexists(path):
            continue
        real = path.resolve()
        if real != root and root not in real.parents:
            raise UserError(f"{path} is a symbolic link that leads out of the base model's directory; "
                            "th-edit does not follow it (copy the file in instead)")
        if not real.is_file():
            raise UserError(f"{path} is not a regular file")
        sources[name] = real
    return sources


def check_side_files(base_dir: Path) -> None:
    """Every side file present in a checkpoint directory is what its name says: JSON files parse
    (to an object), text files are UTF-8. Run when a model is resolved, before any work: apply
    would otherwise copy a damaged file into its output, and transformers would fail on it far
    from its name (or silently skip it)."""
    for name in SIDE_FILES:
        path = base_dir / name
        if path.is_file():
            _check_side_file(name, path.read_bytes(), path)


def _check_side_file(name: str, data: bytes, source: object) -> None:
    if name.endswith(".json"):
        if not isinstance(parse_json(data, source), dict):
            raise UserError(f"{source}: expected a JSON object")
    elif name in TEXT_SIDE_FILES:
        check_utf8(data, source)


def side_files(base_dir: Path, root: Path, out_dtype: torch.dtype | None) -> dict[str, bytes]:
    """The bytes of every allow-listed file the output gets besides weights and th-edit's own:
    config, generation config, tokenizer and chat template, unchanged except that config.json
    gets the output dtype. The one place these files are produced (verify recomputes them)."""
    files = {}
    for name, source in side_file_sources(base_dir, root).items():
        data = source.read_bytes()  # checked when the base was resolved (models.resolve: check_side_files)
        if name == "config.json" and out_dtype is not None:
            config = parse_json(data, base_dir / name)
            dtype_name = str(out_dtype).removeprefix("torch.")
            for key in ("dtype", "torch_dtype"):
                if key in config:
                    config[key] = dtype_name
            config.setdefault("dtype", dtype_name)
            data = (base_json(name, config) + "\n").encode()
        files[name] = portable_file(name, data)  # read the same way by transformers 4.x and 5.x
    return files
