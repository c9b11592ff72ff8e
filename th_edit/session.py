"""One loaded model, shared by analysis, edits, benchmarks and search.

A `Session` holds a transformers model (any supported family, any device and dtype, offloaded or
not), its tokenizer and architecture adapter, and caches the per-head decompositions of its
weights. Edits are computed in float64 on the CPU from the model's own weights and written back in
the model's dtype, either for the duration of a `with session.edited(recipe):` block (restored bit
for bit on exit, also when the block raises) or for good (`session.apply(recipe)`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

import torch

from th_edit import ui
from th_edit.arch import Adapter, ArchInfo, LayerWeights, adapter_for
from th_edit.decompose import Decompositions
from th_edit.devices import input_device, placement, torch_dtype
from th_edit.edit import EditPlan, plan_edit
from th_edit.linalg import HeadSVD
from th_edit.params import LiveParameters
from th_edit.recipe import Edit, Recipe

T = TypeVar("T")


# An edit computed for one loaded model: the new parameter values in the model's dtypes
# (th_edit.edit.plan_edit, the same computation as `apply`'s).
ComputedEdit = EditPlan


def _edits_of(recipe: Recipe | Sequence[Edit]) -> list[Edit]:
    return list(recipe.edits) if isinstance(recipe, Recipe) else list(recipe)


@contextmanager
def swapped_parameters(model: torch.nn.Module, replacements: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Write `replacements` (parameter name -> tensor) into the model and restore the originals, bit
    for bit, on exit (also when the block raises). Offloaded parameters included."""
    parameters = LiveParameters(model)
    saved: dict[str, torch.Tensor] = {}
    try:
        for name, tensor in replacements.items():
            saved[name] = parameters.get(name).clone()
            parameters.set(name, tensor)
        yield
    finally:
        for name, original in saved.items():
            parameters.set(name, original)


@dataclass
class Variant:
    """A model as benchmarked: optionally with parameters swapped in only while it runs."""

    model: torch.nn.Module
    replacements: Mapping[str, torch.Tensor] = field(default_factory=dict)

    @contextmanager
    def active(self) -> Iterator[torch.nn.Module]:
        with swapped_parameters(self.model, self.replacements):
            yield self.model

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Full-sequence logits: the `Forward` that neutral_kl expects."""
        device = input_device(self.model)
        with self.active():
            return self.model(**{k: v.to(device) for k, v in batch.items()}).logits


class Session:
    """A loaded model with its tokenizer, adapter and cached per-head decompositions.

    `svd(...)` and `weights(...)` always describe the session's own weights as they are outside
    any `edited` block, which is what recipe component indices refer to.
    """

    def __init__(self, model: torch.nn.Module, tokenizer=None, *, reference: str | None = None, resolved=None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.adapter: Adapter = adapter_for(model.config)
        self.reference = reference or str(getattr(model.config, "_name_or_path", "") or "model")
        self.resolved = resolved  # th_edit.models.ResolvedModel when loaded from a reference
        self.parameters = LiveParameters(model)
        self.decompositions = Decompositions(self.adapter, self.parameters)
        self._edit_active = False
        self._unedited: dict[Hashable, object] = {}

    def __repr__(self) -> str:
        info = self.info
        return (f"Session({self.reference!r}: {info.family}, {info.n_layers} layers × {info.n_heads} heads, "
                f"d_model {info.d_model}, {self.dtype}, {self.device})")

    # ---- what the model is ---------------------------------------------------------------------

    @property
    def is_edited(self) -> bool:
        """True inside an `edited` block: the model runs with the edit swapped in."""
        return self._edit_active

    @property
    def label(self) -> str:
        """The reference as reports name the model: marked when it runs edited."""
        return f"{self.reference} (edited)" if self._edit_active else self.reference

    @property
    def info(self) -> ArchInfo:
        return self.adapter.info()

    @property
    def device(self) -> torch.device:
        """Where inputs go (the embedding's device; CPU when accelerate offloads it)."""
        return input_device(self.model)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    @property
    def max_length(self) -> int | None:
        """The model's context length, when its config states one."""
        from th_edit.models import context_length

        return context_length(self.model.config)

    def weights(self, layer: int) -> LayerWeights:
        """Effective float64 weights of every query head of `layer` (cached)."""
        return self.decompositions.layer(layer)

    def svd(self, layer: int, head: int, circuit: str) -> HeadSVD:
        """The SVD of one head's effective OV ("ov") or QK ("qk") matrix (cached): U, S, V."""
        return self.decompositions.head(layer, head, circuit.lower())

    def unedited(self, key: Hashable, compute: Callable[[], T]) -> T:
        """`compute()`, run on the unedited model once per `key` and kept for later calls (e.g. the
        "before" scores that many paired benchmarks of one session share). Inside an `edited` block
        the model is not the unedited one: `compute()` runs and nothing is kept. `apply` empties it;
        so does `forget()`, which you need after changing the model's weights yourself."""
        if self._edit_active:
            return compute()
        if key not in self._unedited:
            self._unedited[key] = compute()
        return self._unedited[key]  # type: ignore[return-value]

    def forget(self) -> None:
        """Drop everything cached about the weights (decompositions, unedited-model results)."""
        self.decompositions.clear()
        self._unedited.clear()

    # ---- edits ---------------------------------------------------------------------------------

    def compute(self, recipe: Recipe | Sequence[Edit], measure: bool = True) -> ComputedEdit:
        """The edit's new parameter values for this model (nothing is written).

        Computed in float64 on the CPU from the model's weights and cast to each parameter's dtype;
        `measure` re-decomposes the edited heads from the cast values to report realized singular
        values (skip it when only the effect matters, e.g. in a search).
        """
        from th_edit.recipe import check_against_model

        edits = _edits_of(recipe)
        check_against_model(Recipe.model_construct(edits=edits), self.adapter, "recipe")
        return plan_edit(self.adapter, self.parameters, edits, self.parameters.dtype, decompositions=self.decompositions,
                         measure=measure)

    @contextmanager
    def swapped(self, values: Mapping[str, torch.Tensor]) -> Iterator[None]:
        """Parameters replaced by `values` inside the block, restored bit for bit after it."""
        if self._edit_active:
            raise RuntimeError("an edit is already active on this session; leave its block first")
        self._edit_active = True
        try:
            with swapped_parameters(self.model, values):
                yield
        finally:
            self._edit_active = False

    @contextmanager
    def edited(self, recipe: Recipe | Sequence[Edit] | ComputedEdit, measure: bool = False) -> Iterator[ComputedEdit]:
        """`with session.edited(recipe) as edit:` — the model runs edited inside the block.

        Every parameter is bit-identical to before once the block is left, also when it raises.
        A `ComputedEdit` from `compute` is swapped in as is (compute once, use many times).
        """
        computed = recipe if isinstance(recipe, ComputedEdit) else self.compute(recipe, measure=measure)
        for message in computed.warnings:
            ui.warn(message)
        with self.swapped(computed.values):
            yield computed

    def apply(self, recipe: Recipe | Sequence[Edit], measure: bool = True) -> ComputedEdit:
        """Edit the model in place for good (caches are reset: the new weights are the base now)."""
        if self._edit_active:
            raise RuntimeError("leave the active `edited` block before applying an edit for good")
        computed = self.compute(recipe, measure=measure)
        for message in computed.warnings:
            ui.warn(message)
        for name, value in computed.values.items():
            self.parameters.set(name, value)
        self.forget()  # the new weights are the unedited model now
        return computed

    def variant(self, recipe: Recipe | Sequence[Edit] | ComputedEdit | None = None) -> Variant:
        """The model with the edit swapped in only while it runs (for paired benchmarks)."""
        if recipe is None:
            return Variant(self.model)
        if isinstance(recipe, ComputedEdit):
            return Variant(self.model, recipe.values)  # its warnings went to whoever computed it
        computed = self.compute(recipe, measure=False)
        for message in computed.warnings:
            ui.warn(message)
        return Variant(self.model, computed.values)


def edit_model(model: torch.nn.Module, recipe: Recipe | Sequence[Edit], measure: bool = True) -> ComputedEdit:
    """Edit a loaded transformers model in place, on whatever device and in whatever dtype it is.

    The edit is computed in float64 on the CPU from the model's own weights and written back in
    the model's dtype. Returns the computed edit (its `reports` hold the realized singular values).
    """
    return Session(model).apply(recipe, measure=measure)


def load(reference: str, *, device: str = "cpu", dtype: str = "float32", attn_implementation: str | None = None,
         max_memory: dict | None = None, offload_folder: str | None = None, trust_remote_code: bool = False) -> Session:
    """Load a model reference (any that the CLI takes: offline alias, .gguf file, checkpoint
    directory, hub id) with its tokenizer.

    device: "cpu" (default), "cuda", "cuda:1", "mps", or "auto" (accelerate spreads the model over
    GPUs, CPU and, past `max_memory`, disk in `offload_folder`). dtype: "float32" (default),
    "bfloat16", "float16" or "auto" (the checkpoint's own).
    """
    from th_edit.models import load_model, load_tokenizer, resolve

    resolved = resolve(reference)
    torch_dtype(dtype)  # an unknown dtype is a one-line error before anything loads
    model = load_model(resolved, dtype=dtype, trust_remote_code=trust_remote_code,
                       attn_implementation=attn_implementation, **placement(device, max_memory, offload_folder))
    return Session(model, load_tokenizer(resolved, trust_remote_code), reference=reference, resolved=resolved)
