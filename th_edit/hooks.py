"""Activation hooks on a loaded model, placed through the architecture adapters' module paths.

Read:   attention patterns, head outputs z (each head's attention-weighted values, before the
        output projection) and the residual stream after a layer:
            with hooks.recording(m.model, m.adapter, layers=[20], attention=True, z=True) as rec:
                m.model(**batch)
            rec.attention[20][0]   # [B, H, T, T] of the first forward pass
Write:  scale one direction of one head's output at chosen positions — for an OV component, exactly
        what the weight edit of that component does, but without touching a weight:
            read, write = hooks.ov_component(m, layer=20, head=0, component=1)
            with hooks.scaled(m.model, m.adapter, [hooks.DirectionScale(20, 0, read, write, 0.0)]):
                m.model(**batch)

Positions: None (all), an int (e.g. -1, the last token: batches are left-padded, so that is every
prompt's last token), a sequence of ints, or a boolean mask [B, T].
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import torch

from th_edit.arch import Adapter

Positions = int | Sequence[int] | torch.Tensor | None


def _keep(x: torch.Tensor, positions: Positions, dim: int) -> torch.Tensor:
    """x restricted to `positions` along `dim` (the token axis); the axis is kept."""
    if positions is None:
        return x
    if isinstance(positions, int):
        index = torch.tensor([positions % x.shape[dim]], device=x.device)
    elif isinstance(positions, torch.Tensor) and positions.dtype == torch.bool:
        raise ValueError("a boolean mask selects different positions per row: record all positions and mask them after")
    else:
        index = torch.as_tensor(list(positions), device=x.device) % x.shape[dim]
    return x.index_select(dim, index)


def _mask(positions: Positions, batch: int, length: int, device: torch.device) -> torch.Tensor:
    """[B, T] boolean mask of the positions to act on."""
    if positions is None:
        return torch.ones(batch, length, dtype=torch.bool, device=device)
    if isinstance(positions, torch.Tensor) and positions.dtype == torch.bool:
        if tuple(positions.shape) != (batch, length):
            raise ValueError(f"position mask has shape {tuple(positions.shape)}, the batch is {(batch, length)}")
        return positions.to(device)
    mask = torch.zeros(batch, length, dtype=torch.bool, device=device)
    index = [positions] if isinstance(positions, int) else list(positions)
    mask[:, torch.as_tensor(index, device=device) % length] = True
    return mask


@contextmanager
def eager_attention(model: torch.nn.Module) -> Iterator[None]:
    """Attention patterns exist only with the eager implementation (SDPA and flash kernels never
    form them): switch to it for the block, and back."""
    previous = model.config._attn_implementation
    if previous != "eager":
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if previous != "eager":
            model.set_attn_implementation(previous)


@dataclass
class Recording:
    """What `recording` captured, per layer, one tensor per forward pass (batches differ in length)."""

    attention: dict[int, list[torch.Tensor]] = field(default_factory=lambda: defaultdict(list))  # [B, H, Tq, T]
    z: dict[int, list[torch.Tensor]] = field(default_factory=lambda: defaultdict(list))  # [B, Tq, H, dh]
    residual: dict[int, list[torch.Tensor]] = field(default_factory=lambda: defaultdict(list))  # [B, Tq, d]


@contextmanager
def recording(model: torch.nn.Module, adapter: Adapter, layers: Sequence[int] | None = None, *,
              attention: bool = False, z: bool = False, residual: bool = False,
              positions: Positions = None) -> Iterator[Recording]:
    """Capture attention patterns (query rows at `positions`), head outputs z and the residual
    stream after the layer, for `layers` (default: all), on the CPU in float32."""
    layers = list(range(adapter.n_layers)) if layers is None else list(layers)
    record = Recording()
    with ExitStack() as stack:
        if attention:
            stack.enter_context(eager_attention(model))
        for layer in layers:
            if attention:
                def keep_pattern(module, args, output, layer=layer):
                    record.attention[layer].append(_keep(output[1].detach(), positions, 2).float().cpu())
                _register(stack, model.get_submodule(adapter.attention_module(layer)).register_forward_hook(keep_pattern))
            if z:
                def keep_z(module, args, layer=layer):
                    heads = args[0].detach().unflatten(-1, (adapter.n_heads, adapter.d_head))
                    record.z[layer].append(_keep(heads, positions, 1).float().cpu())
                _register(stack, model.get_submodule(adapter.output_projection_module(layer))
                          .register_forward_pre_hook(keep_z))
            if residual:
                def keep_residual(module, args, output, layer=layer):
                    hidden = output[0] if isinstance(output, tuple) else output
                    record.residual[layer].append(_keep(hidden.detach(), positions, 1).float().cpu())
                _register(stack, model.get_submodule(adapter.decoder_layer_module(layer))
                          .register_forward_hook(keep_residual))
        yield record


def _register(stack: ExitStack, handle) -> None:
    stack.callback(handle.remove)


@dataclass(frozen=True)
class DirectionScale:
    """Scale, in the output of head `head` of `layer`, the coordinate along `read` by `alpha`:
    z_h ← z_h + (alpha − 1) (z_h · read) write   (read, write: [d_head] vectors in z space)."""

    layer: int
    head: int
    read: torch.Tensor
    write: torch.Tensor
    alpha: float
    positions: Positions = None


def ov_component(session, layer: int, head: int, component: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(read, write) in head z space for OV component k of a session's model: scaling its
    coordinate by α changes what the head writes exactly as the weight edit OV' = OV(I + (α−1) v vᵀ).

    What the head writes is y = z W_O (effective W_O, folded post-attention norm included), and
    y·v = z·(W_O v) gives read = W_O v. v lies in the row space of W_O (it is a right singular
    vector of W_V W_O with s > 0), so write = (W_O W_Oᵀ)⁻¹ W_O v is the z-space vector with
    write·W_O = vᵀ; then z' W_O = y + (α − 1)(y·v) vᵀ.
    """
    read, write = ov_components(session, layer, head, [component])
    return read[:, 0], write[:, 0]


def ov_components(session, layer: int, head: int, components: Sequence[int] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(read, write), each [d_head, k] (float64): column j is `ov_component`'s pair for
    components[j] (None: every component of the head). The v_k are orthonormal, so scaling several
    coordinates at once is the weight edit OV(I + Σ_k (α_k − 1) v_k v_kᵀ)."""
    W_O = session.weights(layer).W_O[head]  # [dh, d], float64
    V = session.svd(layer, head, "ov").V
    read = W_O @ (V if components is None else V[:, list(components)])
    return read, torch.linalg.solve(W_O @ W_O.T, read)


@contextmanager
def scaled(model: torch.nn.Module, adapter: Adapter, scales: Sequence[DirectionScale]) -> Iterator[None]:
    """Apply every `DirectionScale` to the head outputs z (the output projection's input)."""
    def rescale(z: torch.Tensor, layer_scales: list[DirectionScale]) -> torch.Tensor:
        z = z.clone()
        for s in layer_scales:
            read, write = s.read.to(z), s.write.to(z)
            coordinate = z[..., s.head, :] @ read  # [B, T]
            mask = _mask(s.positions, z.shape[0], z.shape[1], z.device)
            z[..., s.head, :] += ((s.alpha - 1.0) * coordinate * mask)[..., None] * write
        return z
    with _head_outputs_rewritten(model, adapter, scales, rescale):
        yield


@contextmanager
def _head_outputs_rewritten(model: torch.nn.Module, adapter: Adapter, scales: Sequence, rewrite) -> Iterator[None]:
    """Within the block, each layer named by a scale (its .layer, .head) passes its head outputs z
    [B, T, H, d_head] through rewrite(z, that layer's scales) before the output projection."""
    by_layer: dict[int, list] = defaultdict(list)
    for scale in scales:
        adapter.check_head(scale.layer, scale.head)
        by_layer[scale.layer].append(scale)
    with ExitStack() as stack:
        for layer, layer_scales in by_layer.items():
            def hook(module, args, layer_scales=layer_scales):
                z = args[0].unflatten(-1, (adapter.n_heads, adapter.d_head))
                return (rewrite(z, layer_scales).flatten(-2), *args[1:])
            _register(stack, model.get_submodule(adapter.output_projection_module(layer)).register_forward_pre_hook(hook))
        yield


@dataclass(frozen=True)
class ComponentScales:
    """Scale k OV components of head `head` of `layer` at once, each by its own α (a tensor, so it
    may require grad: the edit becomes differentiable in α):
        z_h ← z_h + ((z_h · read) ⊙ (alpha − 1)) writeᵀ     (read, write: [d_head, k], `ov_components`)
    which changes what the head writes exactly as the weight edit with those scales."""

    layer: int
    head: int
    read: torch.Tensor
    write: torch.Tensor
    alpha: torch.Tensor  # [k]


@contextmanager
def components_scaled(model: torch.nn.Module, adapter: Adapter, scales: Sequence[ComponentScales]) -> Iterator[None]:
    """Apply every `ComponentScales` to the head outputs z (the output projection's input), at all positions."""
    def rescale(z: torch.Tensor, layer_scales: list[ComponentScales]) -> torch.Tensor:
        change = torch.zeros_like(z)  # out of place: the scales may require grad
        for s in layer_scales:
            read, write, alpha = s.read.to(z), s.write.to(z), s.alpha.to(z)
            change[..., s.head, :] = ((z[..., s.head, :] @ read) * (alpha - 1.0)) @ write.T
        return z + change
    with _head_outputs_rewritten(model, adapter, scales, rescale):
        yield


@contextmanager
def residual_added(model: torch.nn.Module, adapter: Adapter, layer: int, vector: torch.Tensor,
                   positions: Positions = -1) -> Iterator[None]:
    """Add `vector` ([d] or [B, d]) to the residual stream after `layer` at `positions`."""
    def add(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        delta = vector.to(hidden).reshape(-1, 1, hidden.shape[-1])  # [1 or B, 1, d]
        mask = _mask(positions, hidden.shape[0], hidden.shape[1], hidden.device)[..., None]
        hidden = hidden + delta * mask
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden
    handle = model.get_submodule(adapter.decoder_layer_module(layer)).register_forward_hook(add)
    try:
        yield
    finally:
        handle.remove()
