"""First-order attribution of every OV component of chosen heads to list recall.

Scaling OV component k of head h by α changes the head's output z (before the output
projection) by (α − 1)(z · read_k) write_k (`hooks.ov_component`: exactly the weight edit).
So the derivative at α = 1 of an objective L is

    dL/dα_k = Σ_positions (z · read_k) (∂L/∂z · write_k),

and one forward and one backward pass per batch give it for every component of every head at
once. The objective is the mean log-probability of the answer among the prompt's candidates,
the smooth version of candidate accuracy. A positive derivative says amplifying the component
helps; the search uses the ranking to pick which of a channel head's components to try, since a
head's effect on recall can be spread over components that the weight scores do not single out.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import replace

import torch

from th_edit.heads import HeadId
from th_edit.hooks import ov_components
from th_edit.runtime import batched, input_device, tokenize_prompts
from th_edit.search.space import MAX_COMPONENTS, Candidate
from th_edit.session import Session
from th_edit.tasks.prompts import TaskPrompt

Head = HeadId  # a head is a th_edit.heads.HeadId everywhere


def ov_directions(session: Session, layer: int, head: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(read, write), each [d_head, r]: column k is `hooks.ov_component`'s pair for component k."""
    return ov_components(session, layer, head)


def component_gradients(session: Session, prompts: Sequence[TaskPrompt], heads: Sequence[Head],
                        batch_size: int = 8) -> dict[Head, torch.Tensor]:
    """{head: [r] dL/dα_k at α = 1} for every OV component of every head in `heads` (L: the mean
    over `prompts` of the answer's log-probability among the candidates)."""
    adapter, model = session.adapter, session.model
    layers = sorted({layer for layer, _ in heads})
    tokenized = tokenize_prompts(session.tokenizer, prompts, max_length=session.max_length)
    directions = {h: tuple(t.float() for t in ov_directions(session, *h)) for h in heads}
    totals = {h: torch.zeros(directions[h][0].shape[1], dtype=torch.float64) for h in heads}
    for indices, batch in batched(tokenized.encoded, batch_size, tokenized.pad_id, input_device(model),
                                  desc="component attribution"):
        captured: dict[int, torch.Tensor] = {}
        with ExitStack() as stack, torch.enable_grad():
            for layer in layers:
                def keep(module, args, layer=layer):
                    z = args[0]
                    if layer == layers[0]:  # gradients below the lowest layer are not needed
                        z = z.detach().requires_grad_(True)
                    captured[layer] = z
                    return (z, *args[1:])
                handle = model.get_submodule(adapter.output_projection_module(layer)).register_forward_pre_hook(keep)
                stack.callback(handle.remove)
            logits = model(**batch, logits_to_keep=1).logits[:, -1].float()
            objective = sum(torch.log_softmax(logits[row, tokenized.targets[i][0]], dim=-1)[tokenized.targets[i][1]]
                            for row, i in enumerate(indices))
            grads = dict(zip(layers, torch.autograd.grad(objective, [captured[layer] for layer in layers])))
        for (layer, head), (read, write) in directions.items():
            z = captured[layer].detach().unflatten(-1, (adapter.n_heads, adapter.d_head))[..., head, :].float().cpu()
            g = grads[layer].unflatten(-1, (adapter.n_heads, adapter.d_head))[..., head, :].float().cpu()
            totals[(layer, head)] += ((z @ read) * (g @ write)).sum(dim=(0, 1)).double()
    return {h: total / len(prompts) for h, total in totals.items()}


def ranked_by_attribution(session: Session, prompts: Sequence[TaskPrompt], candidates: Sequence[Candidate],
                          batch_size: int = 8) -> list[Candidate]:
    """Each OV candidate's components replaced by all of its head's components whose amplification
    helps to first order, best first (at most MAX_COMPONENTS); heads with none are dropped. QK
    candidates are kept as they are."""
    ov_heads = [(c.layer, c.head) for c in candidates if c.circuit == "ov"]
    gradients = component_gradients(session, prompts, ov_heads, batch_size) if ov_heads else {}
    ranked = []
    for candidate in candidates:
        if candidate.circuit != "ov":
            ranked.append(candidate)
            continue
        gradient = gradients[(candidate.layer, candidate.head)]
        order = [int(k) for k in torch.argsort(gradient, descending=True) if gradient[k] > 0][:MAX_COMPONENTS]
        if order:
            ranked.append(replace(candidate, components=tuple(order), evidence=(
                f"{candidate.evidence}; {len(order)} component(s) whose amplification raises the answer's "
                f"log-probability on the tuning prompts (best: component {order[0]}, "
                f"{float(gradient[order[0]]):+.3g} per unit scale)")))
    return ranked
