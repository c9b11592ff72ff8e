"""First-order effect of scaling every OV component of chosen heads, from one forward and one backward
pass per objective (docs/method.md#search, #data-check).

Scaling OV component k of head h by α changes the head's output z (before the output projection) by
(α − 1)(z · read_k) write_k (`hooks.ov_component`: exactly the weight edit), so the derivative at
α = 1 of any objective L is

    dL/dα_k = Σ_positions (z · read_k) (∂L/∂z · write_k)

for every component of every head at once. The search ranks components by it (objective: the
answer's log-probability); the channels data check estimates each component's removal effect
(α = 0: −dL/dα) on a receiver's attention and on the logit difference.

    with torch.enable_grad(), tracked_head_outputs(model, adapter, layers) as z:
        objective = f(model(**batch))
        grads = dict(zip(layers, torch.autograd.grad(objective, [z[l] for l in layers])))
    derivative = component_derivatives(head_slice(z[l], adapter, h), head_slice(grads[l], adapter, h), *directions)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

import torch

from th_edit.arch import Adapter


def ov_directions(session, layer: int, head: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(read, write), each [d_head, r] float64: column k is `hooks.ov_component`'s pair for component k."""
    from th_edit.hooks import ov_components

    return ov_components(session, layer, head)


@contextmanager
def tracked_head_outputs(model: torch.nn.Module, adapter: Adapter, layers: Sequence[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Within the block (under grad), each forward pass leaves in the yielded dict the head outputs z
    [B, T, H·d_head] of `layers` as they enter the output projection, inside the autograd graph. The
    lowest layer's z becomes a leaf, so nothing below it is differentiated."""
    captured: dict[int, torch.Tensor] = {}
    layers = sorted(set(layers))
    with ExitStack() as stack:
        for layer in layers:
            def keep(module, args, layer=layer):
                z = args[0]
                if layer == layers[0]:
                    z = z.detach().requires_grad_(True)
                captured[layer] = z
                return (z, *args[1:])
            handle = model.get_submodule(adapter.output_projection_module(layer)).register_forward_pre_hook(keep)
            stack.callback(handle.remove)
        yield captured


def head_slice(z: torch.Tensor, adapter: Adapter, head: int) -> torch.Tensor:
    """[B, T, d_head] of one head, float32 on the CPU, detached (z or its gradient, [B, T, H·d_head])."""
    return z.detach().unflatten(-1, (adapter.n_heads, adapter.d_head))[..., head, :].float().cpu()


def component_derivatives(z: torch.Tensor, grad: torch.Tensor, read: torch.Tensor, write: torch.Tensor,
                          last_only: bool = False) -> torch.Tensor:
    """[B, r] per row: dL/dα_k = Σ_positions (z · read_k)(∂L/∂z · write_k), z and grad [B, T, d_head] of one
    head, read and write [d_head, r]; at the last position only with `last_only` (batches are
    left-padded, so that is every row's last token)."""
    if last_only:
        z, grad = z[:, -1:], grad[:, -1:]
    return ((z @ read.to(z)) * (grad @ write.to(z))).sum(dim=1)
