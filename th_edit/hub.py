"""Pushing an edited checkpoint to the Hugging Face Hub.

The token is whatever huggingface_hub finds on its own (HF_TOKEN or the cached login); th-edit
only checks that one exists and never reads, prints or stores it.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import tempfile
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub
from huggingface_hub import HfApi, constants, get_token
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, RepositoryNotFoundError
from huggingface_hub.utils import validate_repo_id

from th_edit import strict_json
from th_edit.checkpoint import sha256_file
from th_edit.errors import UserError, first_line
from th_edit.export import (
    BENCHMARK_PLOT,
    CARD_FILE,
    GGUF_CARD,
    PROVENANCE_FILE,
    RECIPE_FILE,
    checkpoint_files,
    is_gguf_output,
    th_edit_record,
)
from th_edit.lora import ADAPTER_DIR
from th_edit.recipe import OUTPUT_FORMATS

# Files of an earlier push that this one does not replace would mix two outputs, per format.
STALE_FILES = {"safetensors": ["*.safetensors", "model.safetensors.index.json"], "gguf": ["*.gguf"],
               "lora": ["*.safetensors"]}
STALE_WEIGHTS = STALE_FILES["safetensors"]
FORMAT_NAMES = {"safetensors": "the safetensors checkpoint", "gguf": "the GGUF file", "lora": "the LoRA adapter"}


@dataclass(frozen=True)
class PushPlan:
    """What one push uploads: `files` are (path in the repo, bytes, path in the output directory).
    A GGUF or adapter repo takes some files under another name (its card as README.md, the adapter's
    files at the top), so those are uploaded from a scratch folder of links (`upload_folder`)."""

    folder: Path
    repo_id: str
    private: bool
    revision: str | None
    files: list[tuple[str, int]]  # (path in the repo, bytes)
    format: str = "safetensors"
    sources: tuple[tuple[str, str], ...] = ()  # (path in the repo, path in `folder`) where the two differ
    left_out: tuple[str, ...] = ()  # the output's other formats, each for a repo of its own
    written: tuple[str, ...] = ()  # every file apply wrote (provenance.json's list), whichever format it belongs to

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)


def output_formats(record: dict) -> list[str]:
    output = record.get("output")
    formats = output.get("formats") if isinstance(output, dict) else None
    return [f for f in formats if f in OUTPUT_FORMATS] if isinstance(formats, list) else ["safetensors"]


def _repo_files(fmt: str, names: list[str]) -> dict[str, str]:
    """{path in the repo: path in the output directory} of the format `fmt`, from the files apply wrote."""
    adapter = f"{ADAPTER_DIR}/"
    if fmt == "lora":
        chosen = {name.removeprefix(adapter): name for name in names if name.startswith(adapter)}
        return {**chosen, RECIPE_FILE: RECIPE_FILE}
    if fmt == "gguf":
        card = GGUF_CARD if GGUF_CARD in names else CARD_FILE
        chosen = {name: name for name in names if is_gguf_output(name) and name != GGUF_CARD}
        chosen.update({n: n for n in (RECIPE_FILE, BENCHMARK_PLOT, PROVENANCE_FILE) if n in names})
        return {**chosen, CARD_FILE: card}
    return {name: name for name in names if not is_gguf_output(name) and not name.startswith(adapter)}


def plan_push(folder: Path, repo_id: str, private: bool, revision: str | None, fmt: str | None = None) -> PushPlan:
    """`fmt`: which format of the output to push (each format is a repo of its own); default the
    safetensors checkpoint, or the GGUF file where apply wrote no checkpoint."""
    if not folder.is_dir():
        raise UserError(f"no such directory: {folder}")
    names = written_by_apply(folder)
    formats = output_formats(th_edit_record(folder) or {})
    if fmt is None:
        fmt = "safetensors" if "safetensors" in formats else formats[0]
    if fmt not in OUTPUT_FORMATS:
        raise UserError(f"--format: unknown format '{fmt}'; choose from {', '.join(OUTPUT_FORMATS)}")
    if fmt not in formats:
        raise UserError(f"{folder} holds no {fmt} output (apply wrote {', '.join(formats)}); "
                        f"`th-edit apply RECIPE --format {fmt}` writes one")
    chosen = _repo_files(fmt, names)
    if fmt != "safetensors" and not any(n.endswith((".gguf", ".safetensors")) for n in chosen.values()):
        raise UserError(f"{folder}: provenance.json names no file of the {fmt} output; run `th-edit verify {folder}`")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise UserError(f"repo id '{repo_id}' must have the form user-or-org/name")
    try:
        validate_repo_id(repo_id)  # the Hub's own naming rules, checked before any network call
    except HFValidationError as exc:
        raise UserError(f"repo id '{repo_id}' is not a valid Hub name: {first_line(exc)}") from None
    if revision is not None:
        check_branch_name(revision)
    files = sorted((repo, (folder / local).stat().st_size) for repo, local in chosen.items())
    sources = tuple(sorted((repo, local) for repo, local in chosen.items() if repo != local))
    return PushPlan(folder, repo_id, private, revision, files, fmt, sources, tuple(f for f in formats if f != fmt),
                    tuple(names))


@contextlib.contextmanager
def upload_source(plan: PushPlan) -> Iterator[Path]:
    """The folder to upload from: the output directory itself, or (where files take other names in
    the repo) a scratch folder of hard links to them (copies where links cannot be made)."""
    if not plan.sources:
        yield plan.folder
        return
    with tempfile.TemporaryDirectory(prefix="th-edit-push-") as scratch:
        renamed = dict(plan.sources)
        for repo_path, _ in plan.files:
            local, target = plan.folder / renamed.get(repo_path, repo_path), Path(scratch) / repo_path
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(local, target)
            except OSError:
                shutil.copyfile(local, target)
        yield Path(scratch)


_REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//")


def check_branch_name(name: str) -> None:
    """--revision names the branch to create and push to: refuse, before any call, what git's
    check-ref-format and `git branch` refuse (the Hub's branches are git refs). `../../x` would
    otherwise reach the Hub client, which only quotes it into a URL."""
    forbidden = _REF_FORBIDDEN.search(name)
    parts = name.split("/")
    problem = (
        "it is empty" if not name else
        f"it contains {forbidden.group()!r}" if forbidden else
        "it starts or ends with '/'" if name.startswith("/") or name.endswith("/") else
        "it ends with '.'" if name.endswith(".") else
        "a part between slashes starts with '.'" if any(part.startswith(".") for part in parts) else
        "a part between slashes ends with '.lock'" if any(part.endswith(".lock") for part in parts) else
        "it starts with '-'" if name.startswith("-") else
        f"{name!r} is reserved by git" if name in ("@", "HEAD") else None
    )
    if problem:
        raise UserError(f"--revision {strict_json.shown(name)} is not a valid branch name: {problem}")


def written_by_apply(folder: Path) -> list[str]:
    """The files apply wrote (those provenance.json lists, and itself), each unchanged since:
    nothing else in the folder is ever uploaded (a stray .env, notes, an old shard), and the
    record may only name files apply writes (export.checkpoint_files), so a doctored one cannot
    smuggle another file in."""
    record = th_edit_record(folder)
    if record is None:
        raise UserError(f"{folder} is not a checkpoint written by th-edit apply (no th-edit provenance.json); "
                        "push uploads only what apply wrote")
    listed = checkpoint_files(folder, record)
    for name, digest in sorted(listed.items()):
        path = folder / name
        if not path.is_file() or path.is_symlink():
            raise UserError(f"{path} is missing (provenance.json lists it); run `th-edit verify {folder}`")
        if sha256_file(path) != digest:
            raise UserError(f"{path} changed since apply (its sha256 differs from provenance.json); "
                            f"run `th-edit verify {folder}`")
    return [*listed, PROVENANCE_FILE]


def push(plan: PushPlan, api: HfApi | None = None) -> str:
    """Create the repo if needed and upload the files apply wrote; returns the commit URL."""
    if get_token() is None:
        raise UserError("not logged in to the Hugging Face Hub: set HF_TOKEN or run `hf auth login`")
    api = api or HfApi(library_name="th-edit")
    try:
        api.create_repo(plan.repo_id, private=plan.private, exist_ok=True, repo_type="model")
        if plan.revision:
            api.create_branch(plan.repo_id, branch=plan.revision, exist_ok=True, repo_type="model")
        with upload_source(plan) as folder:
            commit = api.upload_folder(
                repo_id=plan.repo_id, folder_path=str(folder), repo_type="model", revision=plan.revision,
                commit_message=f"Upload {plan.folder.name} ({FORMAT_NAMES[plan.format]}, edited with th-edit)",
                allow_patterns=[glob.escape(name) for name, _ in plan.files], delete_patterns=STALE_FILES[plan.format],
            )
    except RepositoryNotFoundError:
        raise UserError(f"hub repo '{plan.repo_id}' not found or not writable with your token") from None
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            raise UserError(
                f"the Hub refused the push to '{plan.repo_id}' (HTTP {status}): check your token's write access"
            ) from None
        raise UserError(f"the Hub refused the push to '{plan.repo_id}': {first_line(exc)}") from None
    except HFValidationError as exc:  # a value th-edit passed on from the user (a --revision name, say)
        raise UserError(f"the Hub client refused the push to '{plan.repo_id}': {first_line(exc)}") from None
    except Exception as exc:
        if _is_network_error(exc):
            raise UserError(f"cannot reach the Hugging Face Hub: {first_line(exc)}") from None
        if unreadable_reply(exc):
            raise reply_error(exc) from None
        raise
    return str(getattr(commit, "commit_url", commit))


# What huggingface_hub raises when a reply is not what it expects: not JSON (json.JSONDecodeError,
# a ValueError), or JSON of another shape ([1,2,3], {}, null: KeyError, TypeError, AttributeError...).
_REPLY_ERRORS = (ValueError, KeyError, IndexError, TypeError, AttributeError)
_HUB_CLIENT = Path(huggingface_hub.__file__).parent
_TH_EDIT = Path(__file__).parent


def unreadable_reply(exc: BaseException) -> bool:
    """`exc` came from huggingface_hub reading a reply, not from a bug of th-edit: the innermost
    frame of either package that it passed is huggingface_hub's, outside its argument checks
    (where a wrong call from th-edit, such as an unknown keyword, would fail)."""
    if not isinstance(exc, _REPLY_ERRORS):
        return False
    files = [Path(frame.f_code.co_filename) for frame, _ in traceback.walk_tb(exc.__traceback__)]
    files = [path for path in files if path.is_relative_to(_HUB_CLIENT) or path.is_relative_to(_TH_EDIT)]
    return bool(files) and files[-1].is_relative_to(_HUB_CLIENT) and files[-1].name != "_validators.py"


def reply_error(exc: BaseException, prefix: str = "") -> UserError:
    if isinstance(exc, json.JSONDecodeError):  # a proxy, a captive portal or a wrong HF_ENDPOINT
        what = f"did not answer with JSON ({first_line(exc)})"
    else:
        what = f"answered with JSON the Hub client cannot read ({type(exc).__name__}: {first_line(exc)})"
    return UserError(f"{prefix}the Hub endpoint {constants.ENDPOINT} {what}; check HF_ENDPOINT and any proxy in between")


def _is_network_error(exc: BaseException) -> bool:
    """Connection failures, whichever HTTP client huggingface_hub uses underneath."""
    if isinstance(exc, (OSError, TimeoutError)):
        return True
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"TransportError", "NetworkError", "ConnectError", "ConnectionError", "TimeoutException", "RequestError"})
