"""Safetensors checkpoints on disk: lazy tensor reads and a streaming, deterministic writer.

The `safetensors` library reads by memory-mapping and writes only from a dict that holds every
tensor at once. Editing a checkpoint touches a handful of tensors, so here we read single tensors
with plain file reads (no mapping, so untouched weights never enter the process) and write shards
tensor by tensor, copying unchanged tensors byte for byte. Peak memory is one tensor, not one model.
The format (https://github.com/huggingface/safetensors#format): 8-byte little-endian header length,
a JSON header {name: {dtype, shape, data_offsets}}, then the data buffer with no holes.
"""

from __future__ import annotations

import hashlib
import math
import os
import queue
import struct
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

import torch

from th_edit import strict_json
from th_edit.errors import UserError
from th_edit.readers import decode_json, read_json

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
DTYPE_CODES = {dtype: code for code, dtype in SAFETENSORS_DTYPES.items()}
FLOAT_CODES = {"F64", "F32", "F16", "BF16"}
_CHECKABLE = {SAFETENSORS_DTYPES[code] for code in FLOAT_CODES}  # isfinite is not defined for float8
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_COPY_CHUNK = 16 * 1024 * 1024


class TensorSource(Protocol):
    """Anything that hands out weights by their model state-dict name."""

    def get(self, name: str) -> torch.Tensor: ...

    def __contains__(self, name: object) -> bool: ...


@dataclass(frozen=True)
class StoredTensor:
    name: str  # the key as written in the file
    dtype: str  # safetensors dtype code, e.g. "F32"
    shape: tuple[int, ...]
    file: Path
    start: int  # absolute byte offset of the data in `file`
    nbytes: int

    @property
    def torch_dtype(self) -> torch.dtype:
        return SAFETENSORS_DTYPES[self.dtype]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def read_header(path: Path) -> tuple[dict[str, StoredTensor], dict[str, str]]:
    """Parse one .safetensors file's header without touching its data, and check that every
    tensor's bytes lie inside the file (a file cut short is refused here, not read past its end)."""
    with open(path, "rb") as f:
        file_size = os.fstat(f.fileno()).st_size
        raw_len = f.read(8)
        if len(raw_len) != 8:
            raise UserError(f"{path} is not a safetensors file (too short)")
        (header_len,) = struct.unpack("<Q", raw_len)
        if header_len > 100_000_000 or 8 + header_len > file_size:
            raise UserError(f"{path} is not a safetensors file, or is cut short (header length {header_len} "
                            f"in a file of {file_size} bytes)")
        try:
            header = decode_json(f.read(header_len))
        except ValueError as exc:
            raise UserError(f"{path} is not a safetensors file (its header is {exc})") from None
    if not isinstance(header, dict):
        raise UserError(f"{path} is not a safetensors file (its header is not a JSON object)")
    data_start = 8 + header_len
    metadata = header.pop("__metadata__", None) or {}
    entries = {}
    for name, spec in header.items():
        try:
            (begin, end), dtype, shape = spec["data_offsets"], spec["dtype"], tuple(int(n) for n in spec["shape"])
            if not (isinstance(begin, int) and isinstance(end, int) and all(n >= 0 for n in shape)):
                raise ValueError
        except (TypeError, KeyError, ValueError):
            raise UserError(f"{path} is not a valid safetensors file (malformed header entry for {name!r})") from None
        if dtype not in SAFETENSORS_DTYPES:
            raise UserError(f"{path}: tensor {name} has dtype {dtype}, which th-edit cannot handle")
        entry = StoredTensor(name, dtype, shape, path, data_start + begin, end - begin)
        if not 0 <= begin <= end or entry.nbytes != entry.numel * entry.torch_dtype.itemsize:
            raise UserError(f"{path} is damaged: tensor {name}'s byte range {begin}..{end} does not fit "
                            f"its shape {list(shape)} and dtype {dtype}")
        if entry.start + entry.nbytes > file_size:
            raise UserError(f"{path} is cut short: tensor {name} ends at byte {entry.start + entry.nbytes} "
                            f"but the file has {file_size} bytes")
        entries[name] = entry
    _check_contiguous(path, entries, data_start, file_size)
    return entries, metadata


def _check_contiguous(path: Path, entries: dict[str, StoredTensor], data_start: int, file_size: int) -> None:
    """The format's rule that the tensors tile the data buffer exactly, in offset order. A gap, an
    overlap (two tensors sharing bytes: an edit of one would change the other) or bytes after the
    last tensor mean a damaged or doctored file, which the safetensors library (transformers'
    loader) refuses with a traceback; checked here, where every command reads headers."""
    end, previous = data_start, None
    for entry in sorted(entries.values(), key=lambda e: (e.start, e.nbytes)):
        if entry.start != end:
            what = "a gap of" if entry.start > end else "an overlap of"
            after = f"after tensor {previous}" if previous else "before the first tensor"
            raise UserError(f"{path} is damaged: {what} {abs(entry.start - end)} bytes {after} (tensor {entry.name} "
                            f"starts at data byte {entry.start - data_start}, expected {end - data_start}); "
                            "a safetensors file's tensors tile its data without holes or overlaps")
        end, previous = entry.start + entry.nbytes, entry.name
    if end != file_size:
        raise UserError(f"{path} is damaged: {file_size - end} bytes after the last tensor's data "
                        "(a safetensors file ends with its last tensor)")


def check_finite(tensor: torch.Tensor, name: str, where: object) -> None:
    """Refuse NaN or infinite values in a weight read from `where` (a file or a model): damaged
    weights would otherwise flow silently into edits, benchmarks and provenance."""
    if tensor.is_floating_point() and tensor.dtype in _CHECKABLE and not bool(torch.isfinite(tensor).all()):
        raise UserError(f"{where}: tensor {name} contains NaN or infinite values (the weights are damaged)")


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory, in index order."""
    index = directory / INDEX_FILE
    if index.is_file():
        return [directory / name for name in sorted(set(_weight_map(index).values()))]
    single = directory / SINGLE_FILE
    if single.is_file():
        return [single]
    return sorted(directory.glob("*.safetensors"))


def _weight_map(index: Path) -> dict[str, str]:
    """The index's {tensor name: shard file name}, every shard a plain file name of a file beside
    the index (a name such as ../x.safetensors must not make th-edit read outside the checkpoint)."""
    record = read_json(index)
    weight_map = record.get("weight_map") if isinstance(record, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise UserError(f"{index} is damaged: it has no 'weight_map' object naming the shard of each tensor")
    for tensor, shard in weight_map.items():
        if not isinstance(shard, str) or shard in ("", ".", "..") or Path(shard).name != shard:
            raise UserError(f"{index} is damaged: tensor {tensor}'s shard {strict_json.shown(shard)} is not a file name "
                            "in the checkpoint directory")
    for shard in sorted(set(weight_map.values())):
        if not (index.parent / shard).is_file():
            raise UserError(f"{index} names the shard {shard}, which is missing from {index.parent}")
    return weight_map


class CheckpointTensors:
    """Lazy, read-only access to the tensors of a safetensors checkpoint directory.

    Names are model state-dict names. Older checkpoints sometimes store keys without the
    base-model prefix (GPT-2's `h.0.attn...` for `transformer.h.0.attn...`); `resolve` maps those,
    exactly as transformers does when it loads them.
    """

    def __init__(self, directory: Path):
        self.directory = directory
        files = weight_files(directory)
        if not files:
            raise UserError(
                f"{directory} has no .safetensors weights (th-edit reads safetensors only; "
                "convert .bin checkpoints with transformers' save_pretrained first)"
            )
        self.files = files
        self.entries: dict[str, StoredTensor] = {}
        self.metadata: dict[str, str] = {}
        for file in files:
            entries, metadata = read_header(file)
            self.entries.update(entries)
            self.metadata.update(metadata)

    def resolve(self, name: str) -> str:
        if name in self.entries:
            return name
        _, _, unprefixed = name.partition(".")
        if unprefixed in self.entries:
            return unprefixed
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        try:
            self.resolve(str(name))
        except KeyError:
            return False
        return True

    def entry(self, name: str) -> StoredTensor:
        try:
            return self.entries[self.resolve(name)]
        except KeyError:
            raise UserError(f"{self.directory}: the weights have no tensor '{name}' (they do not match config.json)") from None

    def get(self, name: str) -> torch.Tensor:
        entry = self.entry(name)
        with open(entry.file, "rb") as f:
            f.seek(entry.start)
            buffer = bytearray(f.read(entry.nbytes))
        if len(buffer) != entry.nbytes:  # the header was checked against the size: the file shrank since
            raise UserError(f"{entry.file} is cut short: it ends inside tensor {entry.name}")
        if not buffer:
            return torch.empty(entry.shape, dtype=entry.torch_dtype)
        tensor = torch.frombuffer(buffer, dtype=entry.torch_dtype).reshape(entry.shape)
        check_finite(tensor, entry.name, entry.file)
        return tensor

    def same_values(self, first: str, second: str) -> bool:
        """Whether two stored tensors hold equal values (torch.equal, as transformers compares
        weights it may tie), read side by side in chunks: never a whole tensor in memory."""
        a, b = self.entry(first), self.entry(second)
        if a.shape != b.shape:
            return False
        step = _COPY_CHUNK // 8  # elements per chunk (of at most 8 bytes each)
        with open(a.file, "rb") as fa, open(b.file, "rb") as fb:
            fa.seek(a.start)
            fb.seek(b.start)
            for done in range(0, a.numel, step):
                count = min(step, a.numel - done)
                chunks = [_read_elements(f, e, count) for f, e in ((fa, a), (fb, b))]
                if a.dtype != b.dtype:
                    chunks = [chunk.double() for chunk in chunks]
                if not torch.equal(*chunks):
                    return False
        return True

    def total_parameters(self) -> int:
        return sum(entry.numel for entry in self.entries.values())

    def dtypes(self) -> dict[str, int]:
        """Parameter count per stored dtype."""
        counts: dict[str, int] = {}
        for entry in self.entries.values():
            counts[entry.dtype] = counts.get(entry.dtype, 0) + entry.numel
        return counts


def _read_elements(file: BinaryIO, entry: StoredTensor, count: int) -> torch.Tensor:
    """The next `count` elements of `entry` from `file` (positioned inside it)."""
    data = bytearray(file.read(count * entry.torch_dtype.itemsize))
    if len(data) != count * entry.torch_dtype.itemsize:  # the header was checked against the size: the file shrank since
        raise UserError(f"{entry.file} is cut short: it ends inside tensor {entry.name}")
    return torch.frombuffer(data, dtype=entry.torch_dtype) if data else torch.empty(0, dtype=entry.torch_dtype)


class ModelTensors:
    """The same interface over an in-memory transformers model (no copies)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.state = model.state_dict(keep_vars=True)

    def __contains__(self, name: object) -> bool:
        return name in self.state

    def get(self, name: str) -> torch.Tensor:
        return self.state[name].detach()


# ----------------------------------------------------------------------------------------------
# Writing


@dataclass(frozen=True)
class PendingTensor:
    """One tensor to write: its header facts and a callable that streams its bytes."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    write_to: Callable[[BinaryIO], None]


def tensor_bytes_writer(tensor: torch.Tensor) -> Callable[[BinaryIO], None]:
    def write(out: BinaryIO) -> None:
        flat = tensor.detach().contiguous().reshape(-1)
        if flat.numel():
            out.write(flat.view(torch.uint8).numpy().data)

    return write


def pending_from_tensor(name: str, tensor: torch.Tensor) -> PendingTensor:
    return PendingTensor(
        name, DTYPE_CODES[tensor.dtype], tuple(tensor.shape), tensor.numel() * tensor.element_size(),
        tensor_bytes_writer(tensor),
    )


def pending_copy(entry: StoredTensor, name: str | None = None) -> PendingTensor:
    """Copy a stored tensor byte for byte, without decoding it."""

    # Copied tensors are never decoded otherwise: check their values on the way through (the
    # chunk size is a multiple of every element size, so each chunk holds whole elements).
    dtype = entry.torch_dtype if entry.dtype in FLOAT_CODES else None

    def write(out: BinaryIO) -> None:
        with open(entry.file, "rb") as f:
            f.seek(entry.start)
            left = entry.nbytes
            while left:
                # A fresh buffer per chunk: the writer hashes it later, on another thread.
                chunk = bytearray(min(_COPY_CHUNK, left))
                size = f.readinto(chunk)
                if size != len(chunk):
                    raise UserError(f"{entry.file} is cut short: it ends inside tensor {entry.name}")
                if dtype is not None:
                    check_finite(torch.frombuffer(chunk, dtype=dtype), entry.name, entry.file)
                out.write(chunk)
                left -= size

    return PendingTensor(name or entry.name, entry.dtype, entry.shape, entry.nbytes, write)


def shard_groups(tensors: list[PendingTensor], max_shard_bytes: int | None) -> list[list[PendingTensor]]:
    """Greedy sharding in the given order, like transformers: a tensor bigger than the limit
    gets a shard of its own."""
    if max_shard_bytes is None:
        return [tensors]
    groups: list[list[PendingTensor]] = [[]]
    size = 0
    for tensor in tensors:
        if groups[-1] and size + tensor.nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(tensor)
        size += tensor.nbytes
    return groups


class _HashingWriter:
    """Writes to a file and hashes the same bytes on a second thread.

    Hashing what we write saves a second pass over the output; doing it on another thread
    (hashlib releases the GIL) keeps it off the critical path. The queue is short, so at most a
    few chunks wait for the hasher.
    """

    def __init__(self, file: BinaryIO):
        self.file, self.position = file, 0
        self.digest = hashlib.sha256()
        self.pending: queue.Queue[memoryview | None] = queue.Queue(maxsize=4)
        self.hasher = threading.Thread(target=self._hash, daemon=True)
        self.hasher.start()

    def _hash(self) -> None:
        while (view := self.pending.get()) is not None:
            self.digest.update(view)

    def write(self, data) -> int:
        view = memoryview(data).cast("B")  # keeps `data` alive until it has been hashed
        self.file.write(view)
        self.pending.put(view)
        self.position += len(view)
        return len(view)

    def tell(self) -> int:
        return self.position

    def finish(self) -> str:
        self.pending.put(None)
        self.hasher.join()
        return self.digest.hexdigest()


class _Discard:
    """A sink that keeps nothing: `_HashingWriter` hashes what passes through it."""

    def write(self, data) -> int:
        return len(memoryview(data))


def stream_safetensors(sink: BinaryIO | None, tensors: list[PendingTensor], metadata: dict[str, str]) -> str:
    """The one writer of the safetensors format: header and data of one file streamed into `sink`
    (None: nowhere, only hashed, as verify rebuilds a checkpoint); returns the file's sha256."""
    # Larger dtypes first keeps every tensor aligned to its element size (the data buffer may
    # not have holes), the same rule the reference implementation follows.
    ordered = sorted(tensors, key=lambda t: (-SAFETENSORS_DTYPES[t.dtype].itemsize, t.name))
    header: dict[str, object] = {"__metadata__": dict(sorted(metadata.items()))}
    offset = 0
    for tensor in ordered:
        header[tensor.name] = {
            "dtype": tensor.dtype, "shape": list(tensor.shape), "data_offsets": [offset, offset + tensor.nbytes],
        }
        offset += tensor.nbytes
    encoded = strict_json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    out = _HashingWriter(sink if sink is not None else _Discard())  # type: ignore[arg-type]
    try:
        out.write(struct.pack("<Q", len(encoded)))
        out.write(encoded)
        for tensor in ordered:
            before = out.tell()
            tensor.write_to(out)  # type: ignore[arg-type]
            if out.tell() - before != tensor.nbytes:
                raise RuntimeError(f"wrote {out.tell() - before} bytes for {tensor.name}, expected {tensor.nbytes}")
    finally:
        digest = out.finish()
    return digest


def _write_one_file(path: Path, tensors: list[PendingTensor], metadata: dict[str, str]) -> str:
    """Write one safetensors file; returns its sha256."""
    with open(path, "wb") as file:
        digest = stream_safetensors(file, tensors, metadata)
        file.flush()
        os.fsync(file.fileno())
    return digest


def write_checkpoint_weights(
    directory: Path,
    tensors: Iterable[PendingTensor],
    max_shard_bytes: int | None = None,
    progress: Callable[[Iterable[list[PendingTensor]]], Iterable[list[PendingTensor]]] | None = None,
) -> dict[str, str]:
    """Write tensors as `model.safetensors`, or as numbered shards plus an index when they exceed
    `max_shard_bytes`. Output depends only on the tensors' names, dtypes, shapes and bytes.
    Returns {file name: sha256} for every file written, the index included (it decides which
    shard a tensor is loaded from, so it is as much part of the weights as the shards)."""
    tensors = list(tensors)
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        raise ValueError("duplicate tensor names")
    groups = shard_groups(tensors, max_shard_bytes)
    metadata = {"format": "pt"}
    if len(groups) == 1:
        return {SINGLE_FILE: _write_one_file(directory / SINGLE_FILE, groups[0], metadata)}
    hashes = {}
    weight_map = {}
    iterator = progress(groups) if progress else groups
    for i, group in enumerate(iterator, start=1):
        name = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        hashes[name] = _write_one_file(directory / name, group, metadata)
        weight_map.update({t.name: name for t in group})
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors)}, "weight_map": dict(sorted(weight_map.items()))}
    (directory / INDEX_FILE).write_text(strict_json.dumps(index, indent=2) + "\n")
    hashes[INDEX_FILE] = sha256_file(directory / INDEX_FILE)
    return hashes


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_COPY_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def parse_size(text: str | int) -> int:
    """'500MB', '2GB', '1.5GiB' or a byte count -> bytes (decimal units as in transformers)."""
    if isinstance(text, int):
        if text < 1:
            raise ValueError(f"not a size: {text} (must be at least 1 byte)")
        return text
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    cleaned = text.strip().upper().replace(" ", "")
    number = cleaned.rstrip("KMGTIB")
    unit = cleaned[len(number):]
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"not a size: {text!r} (use e.g. 500MB or 2GB)") from None
    if unit not in units or not math.isfinite(value) or int(value * units[unit]) < 1:
        raise ValueError(f"not a size: {text!r} (use e.g. 500MB or 2GB)")
    return int(value * units[unit])
