"""Run a model from layer L on, reusing the residual stream that enters layer L.

An edit of layers ≥ L cannot change what enters layer L, so for a fixed set of batches that
residual stream is computed once with the unedited model and every later forward pass starts
there: the layers below L are swapped for stand-ins that hand the cached tensor on (layer 0's
stand-in returns it, the others pass it through). Everything else of the model's own forward
(embedding lookup, masks, rotary tables, the layers ≥ L, final norm, unembedding) runs as usual,
so the result is the full forward pass of the edited model, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch

from th_edit.arch import Adapter

Batch = dict[str, torch.Tensor]


class _Handover(torch.nn.Module):
    """Stands in for a skipped decoder layer: returns `value` if set, else its input unchanged
    (as a tuple where the family's layers return one: the model reads the hidden states from it)."""

    def __init__(self, returns_tuple: bool = False) -> None:
        super().__init__()
        self.value: torch.Tensor | None = None
        self.returns_tuple = returns_tuple

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor | tuple[torch.Tensor, None]:
        hidden = hidden_states if self.value is None else self.value
        return (hidden, None) if self.returns_tuple else hidden


class PrefixCache:
    """Inputs of decoder layer `layer` for each of `batches`, computed once with the model as it is now."""

    def __init__(self, model: torch.nn.Module, adapter: Adapter, layer: int, batches: Sequence[Batch],
                 advance: Callable[[], object] | None = None):
        """`advance`: called as each batch is cached (a progress bar's; not called when layer is 0,
        which caches nothing)."""
        if not 0 <= layer < adapter.n_layers:
            raise ValueError(f"layer {layer} out of range 0..{adapter.n_layers - 1}")
        self.model, self.adapter, self.layer = model, adapter, layer
        self.batches = list(batches)
        self.entering: list[torch.Tensor] = []
        if layer == 0:
            return  # nothing to skip
        target = model.get_submodule(adapter.decoder_layer_module(layer))

        def keep(module, args):
            self.entering.append(args[0].detach())

        handle = target.register_forward_pre_hook(keep)
        try:
            with torch.no_grad(), self._skipping_from(layer + 1):  # nothing above `layer` is needed
                for batch in self.batches:
                    model(**batch, logits_to_keep=1)
                    if advance is not None:
                        advance()
        finally:
            handle.remove()

    @contextmanager
    def _skipping_from(self, start: int) -> Iterator[None]:
        """Layers ≥ start replaced by pass-through stand-ins (capturing needs only the lower ones)."""
        with _replaced_layers(self.model, self.adapter, range(start, self.adapter.n_layers)):
            yield

    def forward(self, index: int, **kwargs) -> torch.Tensor:
        """The model's output for batch `index` (kwargs go to the model, e.g. logits_to_keep=1),
        with the layers below `layer` replaced by the cached residual stream."""
        batch = self.batches[index]
        if self.layer == 0:
            return self.model(**batch, **kwargs).logits
        with _replaced_layers(self.model, self.adapter, range(self.layer)) as stand_ins:
            stand_ins[0].value = self.entering[index]
            return self.model(**batch, **kwargs).logits


@contextmanager
def _replaced_layers(model: torch.nn.Module, adapter: Adapter, layers: Sequence[int] | range) -> Iterator[list[_Handover]]:
    """Decoder layers `layers` swapped for hand-over stand-ins inside the block."""
    layers = list(layers)
    holders = []
    for layer in layers:
        parent_name, _, index = adapter.decoder_layer_module(layer).rpartition(".")
        holders.append((model.get_submodule(parent_name), int(index)))
    originals = [parent[index] for parent, index in holders]
    stand_ins = [_Handover(adapter.decoder_layer_returns_tuple) for _ in layers]
    try:
        for (parent, index), stand_in in zip(holders, stand_ins):
            parent[index] = stand_in
        yield stand_ins
    finally:
        for (parent, index), original in zip(holders, originals):
            parent[index] = original
