"""Pushing an edited checkpoint to the Hugging Face Hub.

The token is whatever huggingface_hub finds on its own (HF_TOKEN or the cached login); th-edit
only checks that one exists and never reads, prints or stores it.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import HfApi, constants, get_token
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, RepositoryNotFoundError
from huggingface_hub.utils import validate_repo_id

from th_edit.checkpoint import sha256_file
from th_edit.errors import UserError
from th_edit.export import PROVENANCE_FILE
from th_edit.readers import read_json

# Weight files of an earlier push that this one does not replace would mix two checkpoints.
STALE_WEIGHTS = ["*.safetensors", "model.safetensors.index.json"]


@dataclass(frozen=True)
class PushPlan:
    folder: Path
    repo_id: str
    private: bool
    revision: str | None
    files: list[tuple[str, int]]  # (relative path, bytes)

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)


def plan_push(folder: Path, repo_id: str, private: bool, revision: str | None) -> PushPlan:
    if not folder.is_dir():
        raise UserError(f"no such directory: {folder}")
    names = written_by_apply(folder)
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise UserError(f"repo id '{repo_id}' must have the form user-or-org/name")
    try:
        validate_repo_id(repo_id)  # the Hub's own naming rules, checked before any network call
    except HFValidationError as exc:
        raise UserError(f"repo id '{repo_id}' is not a valid Hub name: {_first_line(exc)}") from None
    return PushPlan(folder, repo_id, private, revision, sorted((name, (folder / name).stat().st_size) for name in names))


def written_by_apply(folder: Path) -> list[str]:
    """The files apply wrote (those provenance.json lists, and itself), each unchanged since:
    nothing else in the folder is ever uploaded (a stray .env, notes, an old shard)."""
    provenance = folder / PROVENANCE_FILE
    record = read_json(provenance) if provenance.is_file() else None
    if not isinstance(record, dict) or record.get("tool") != "th-edit":
        raise UserError(f"{folder} is not a checkpoint written by th-edit apply (no th-edit provenance.json); "
                        "push uploads only what apply wrote")
    listed: dict[str, str] = {}
    for key in ("weights_sha256", "files_sha256"):
        if not isinstance(record.get(key), dict):
            raise UserError(f"{provenance}: field '{key}' is missing (written by an older th-edit: apply the recipe again)")
        listed.update(record[key])
    for name, digest in sorted(listed.items()):
        # Plain names only: a doctored record must not reach outside the folder.
        if not isinstance(name, str) or Path(name).name != name or name.startswith(".") or not isinstance(digest, str):
            raise UserError(f"{provenance}: '{name}' is not a file name apply writes")
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
        commit = api.upload_folder(
            repo_id=plan.repo_id, folder_path=str(plan.folder), repo_type="model", revision=plan.revision,
            commit_message=f"Upload {plan.folder.name} (edited with th-edit)",
            allow_patterns=[glob.escape(name) for name, _ in plan.files], delete_patterns=STALE_WEIGHTS,
        )
    except RepositoryNotFoundError:
        raise UserError(f"hub repo '{plan.repo_id}' not found or not writable with your token") from None
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            raise UserError(
                f"the Hub refused the push to '{plan.repo_id}' (HTTP {status}): check your token's write access"
            ) from None
        raise UserError(f"the Hub refused the push to '{plan.repo_id}': {_first_line(exc)}") from None
    except ValueError as exc:  # json.JSONDecodeError: a proxy, a captive portal or a wrong HF_ENDPOINT
        raise UserError(f"the Hub endpoint {constants.ENDPOINT} did not answer with JSON ({_first_line(exc)}); "
                        "check HF_ENDPOINT and any proxy in between") from None
    except Exception as exc:
        if _is_network_error(exc):
            raise UserError(f"cannot reach the Hugging Face Hub: {_first_line(exc)}") from None
        raise
    return str(getattr(commit, "commit_url", commit))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _is_network_error(exc: BaseException) -> bool:
    """Connection failures, whichever HTTP client huggingface_hub uses underneath."""
    if isinstance(exc, (OSError, TimeoutError)):
        return True
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"TransportError", "NetworkError", "ConnectError", "ConnectionError", "TimeoutException", "RequestError"})
