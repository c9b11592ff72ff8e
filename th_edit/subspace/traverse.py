"""Steer with the subspace: set the sender heads' signal in it to chosen points, see what is selected.

Where the intervention happens, exactly: at the last token, in the residual stream *after*
decoder layer L* = the last sender layer (so every later layer, the movers included, reads the
changed stream; layers up to L* are untouched). With the signal s = Σ_{sender heads} z_h W_O^eff[h]
· scale computed in the same forward pass (hooks on the sender layers' output projections; the
scale is the post-attention norm's, Gemma, from `Adapter.output_scale`) and the basis B (d×k,
orthonormal columns), the residual stream x becomes

    replace:  x + B (p − Bᵀ s)   — the sender heads' component in the subspace is now p
    add:      x + B p            — p is added to it

A coordinate of p that is NaN is left as it is. The rest of the residual stream, and whatever
other heads write into the subspace, are unchanged.

The traversal runs each prompt's tokens but the last once (keeping the key/value cache), then
only the last token per point, many points per forward pass: exact, because the intervention
touches the last token only, so no earlier position's keys and values change.
"""

from __future__ import annotations

import copy
import inspect
import itertools
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch

from th_edit import hooks, ui
from th_edit.runtime import CachedBatches, pad_id
from th_edit.subspace.items import ItemTokens
from th_edit.subspace.survey import Head, laundry_items
from th_edit.tasks.prompts import TaskPrompt

MODES = ("replace", "add")
ROWS_PER_FORWARD = 256  # (prompt, point) rows in one last-token forward pass


class SubspaceIntervention:
    """Hooks that set the sender heads' signal in span(basis) at the last token (see module doc).

    Set `points` ([rows, k], one per batch row; NaN = leave that coordinate) before each forward
    pass inside `installed()`; `points = None` leaves the model unchanged (the signal is still
    recorded in `signal`).
    """

    def __init__(self, session, sender_heads: Sequence[Head], basis: torch.Tensor, mode: str = "replace"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        if not sender_heads:
            raise ValueError("no sender heads")
        self.session, self.mode = session, mode
        self.sender_heads = list(dict.fromkeys(sender_heads))
        self.layer = max(layer for layer, _ in self.sender_heads)  # L*: the residual stream after it changes
        self.basis = basis.double()
        self.points: torch.Tensor | None = None
        self.signal: torch.Tensor | None = None  # [rows, d] of the last forward pass

    def _sender_hook(self, layer: int, heads: list[int]):
        adapter = self.session.adapter
        W_O = self.session.weights(layer).W_O[heads]  # [n, dh, d] float64

        def hook(module, args, output):
            z = args[0][:, -1].unflatten(-1, (adapter.n_heads, adapter.d_head))[:, heads]  # [B, n, dh]
            scale = adapter.output_scale(layer, output[:, -1])  # [B, 1]
            part = torch.einsum("bnh,nhd->bd", z.double(), W_O.to(z.device)) * scale.double()
            self.signal = part if self.signal is None else self.signal + part.to(self.signal.device)
        return hook

    def _residual_hook(self, module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        signal, points = self.signal, self.points
        if points is None:
            return output
        basis = self.basis.to(hidden.device)
        points = points.double().to(hidden.device)
        if points.shape[0] not in (1, hidden.shape[0]):
            raise ValueError(f"{points.shape[0]} points for a batch of {hidden.shape[0]} rows")
        current = signal.to(hidden.device) @ basis  # [B, k]
        target = points if self.mode == "add" else points - current
        delta = torch.where(torch.isnan(points), torch.zeros_like(target), target) @ basis.T  # [B, d]
        hidden = hidden.clone()
        hidden[:, -1] += delta.to(hidden.dtype)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    @contextmanager
    def installed(self) -> Iterator["SubspaceIntervention"]:
        model, adapter = self.session.model, self.session.adapter
        by_layer: dict[int, list[int]] = {}
        for layer, head in self.sender_heads:
            adapter.check_head(layer, head)
            by_layer.setdefault(layer, []).append(head)
        with ExitStack() as stack:
            # Every forward pass starts with a fresh signal: the embedding runs first.
            reset = model.get_input_embeddings().register_forward_pre_hook(lambda *_: setattr(self, "signal", None))
            stack.callback(reset.remove)
            for layer, heads in by_layer.items():
                module = model.get_submodule(adapter.output_projection_module(layer))
                stack.callback(module.register_forward_hook(self._sender_hook(layer, heads)).remove)
            block = model.get_submodule(adapter.decoder_layer_module(self.layer))
            stack.callback(block.register_forward_hook(self._residual_hook).remove)
            yield self


# ----------------------------------------------------------------------------------------------
# Grid and selections


def grid_axes(coordinates: torch.Tensor, per_axis: int, axes: int, mode: str, margin: float = 0.15) -> list[torch.Tensor]:
    """Values along the first `axes` basis directions: the range of the data's coordinates
    widened by `margin` of it on both sides (replace), or that range centred on 0 (add)."""
    low, high = coordinates[:, :axes].min(0).values, coordinates[:, :axes].max(0).values
    span = (high - low).clamp_min(1e-12)
    low, high = low - margin * span, high + margin * span
    if mode == "add":
        centre = (low + high) / 2
        low, high = low - centre, high - centre
    return [torch.linspace(float(lo), float(hi), per_axis, dtype=torch.float64) for lo, hi in zip(low, high)]


def grid_points(axes: Sequence[torch.Tensor], dims: int) -> torch.Tensor:
    """[∏ len(axis), dims] points of the grid (first axis slowest); dims beyond the axes are NaN."""
    points = torch.tensor(list(itertools.product(*[a.tolist() for a in axes])), dtype=torch.float64)
    if dims > len(axes):
        points = torch.cat([points, torch.full((len(points), dims - len(axes)), float("nan"), dtype=torch.float64)], 1)
    return points


@dataclass
class Selections:
    """Per point: for each prompt, the item the movers attend to most and the item predicted."""

    attended: torch.Tensor  # [points, prompts] item index (first-list position)
    predicted: torch.Tensor  # [points, prompts]
    n_items: int

    def fractions(self, which: str) -> torch.Tensor:
        """[points, N] share of prompts selecting each item."""
        chosen = self.attended if which == "attended" else self.predicted
        return torch.nn.functional.one_hot(chosen, self.n_items).double().mean(1)


def _cache_keyword(model: torch.nn.Module) -> str:
    # transformers renamed `past_key_values` to `cache` during 5.x; accept both.
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _returned_cache(output):
    for key in ("cache", "past_key_values"):
        value = output.get(key)
        if value is not None:
            return value
    raise RuntimeError("the model returned no key/value cache")


def _item_scores(pattern: torch.Tensor, items: ItemTokens, offset: int) -> torch.Tensor:
    """[N] attention (summed over rows) to each item's mentions, from last-token attention rows [M, K].

    A row holds the last K positions of the sequence (all of it, or a sliding-window layer's
    cache); `offset` is where the prompt's first token falls in it (K − the prompt's length,
    negative when the window starts inside the prompt). Mentions before the row get no attention.
    """
    def at(t: int) -> torch.Tensor:
        return pattern[:, t] if t >= 0 else pattern.new_zeros(pattern.shape[0])
    return torch.stack([sum(at(offset + t).sum() for t in items.mentions(i)) for i in range(len(items.first))])


def select(session, prompts: Sequence[TaskPrompt], sender_heads: Sequence[Head], movers: Sequence[Head],
           basis: torch.Tensor, points: torch.Tensor, mode: str = "replace", batch_size: int = 16,
           desc: str = "traversing") -> Selections:
    """For each point (rows of `points`, basis coordinates) and each prompt (all with the same N):
    which item the mover heads attend to most at the last token, and which item the model predicts
    among the candidates, with the sender heads' signal set to the point (see the module doc)."""
    model, adapter = session.model, session.adapter
    prompts, encoded, candidates, items = laundry_items(session.tokenizer, prompts, session.max_length)
    sizes = {p.n_items for p in prompts}
    if len(sizes) != 1:
        raise ValueError(f"traverse prompts of one N at a time, not {sorted(sizes)}")
    if min(layer for layer, _ in movers) <= max(layer for layer, _ in sender_heads):
        raise ValueError("every mover head must come after the last sender layer")
    intervention = SubspaceIntervention(session, sender_heads, basis, mode)
    mover_layers = sorted({layer for layer, _ in movers})
    pad, keyword = pad_id(session.tokenizer), _cache_keyword(model)
    attended = torch.zeros(len(points), len(prompts), dtype=torch.long)
    predicted = torch.zeros_like(attended)
    batches = CachedBatches(model, adapter, encoded, batch_size, pad, session.device)
    with torch.inference_mode(), intervention.installed():
        for number, (indices, batch) in enumerate(zip(batches.groups, batches.batches), start=1):
            intervention.points = None
            prefix = model(**{k: v[:, :-1] for k, v in batch.items()}, use_cache=True, logits_to_keep=1)
            cache = _returned_cache(prefix)
            per_forward = max(1, ROWS_PER_FORWARD // len(indices)) if hasattr(cache, "batch_repeat_interleave") else 1
            starts = range(0, len(points), per_forward)
            for start in ui.progress(starts, desc=f"{desc} (prompt batch {number}/{len(batches.groups)})", unit="pass"):
                chunk = points[start:start + per_forward]
                repeated = copy.deepcopy(cache)
                if len(chunk) > 1:
                    repeated.batch_repeat_interleave(len(chunk))
                last = {"input_ids": batch["input_ids"][:, -1:], "attention_mask": batch["attention_mask"],
                        "position_ids": batch["position_ids"][:, -1:]}
                last = {k: v.repeat_interleave(len(chunk), dim=0) for k, v in last.items()}  # row = prompt·G + point
                intervention.points = chunk.repeat(len(indices), 1)
                with hooks.recording(model, adapter, mover_layers, attention=True, positions=-1) as rec:
                    logits = model(**last, **{keyword: repeated}, use_cache=True, logits_to_keep=1).logits[:, -1]
                logits = logits.double().cpu()
                patterns = {layer: rec.attention[layer][0][:, :, 0] for layer in mover_layers}  # [R, H, T]
                for row_in_batch, i in enumerate(indices):
                    for g in range(len(chunk)):
                        row = row_in_batch * len(chunk) + g
                        # A row of K keys ends at the last token: the prompt starts at K − its length.
                        scores = sum(_item_scores(patterns[layer][row, head][None], items[i],
                                                  patterns[layer].shape[-1] - len(encoded[i])) for layer, head in movers)
                        attended[start + g, i] = int(scores.argmax())
                        predicted[start + g, i] = int(logits[row, candidates[i]].argmax())
    return Selections(attended, predicted, next(iter(sizes)))


# ----------------------------------------------------------------------------------------------
# Contiguity of the regions


def regions(labels: torch.Tensor) -> dict[int, int]:
    """Connected components (neighbours share a face) of each label on a grid of labels."""
    shape = tuple(labels.shape)
    seen = torch.zeros(shape, dtype=torch.bool)
    counts: dict[int, int] = {}
    for start in itertools.product(*[range(n) for n in shape]):
        if seen[start]:
            continue
        label = int(labels[start])
        counts[label] = counts.get(label, 0) + 1
        seen[start] = True
        queue = deque([start])
        while queue:
            cell = queue.popleft()
            for axis in range(len(shape)):
                for step in (-1, 1):
                    neighbour = list(cell)
                    neighbour[axis] += step
                    neighbour = tuple(neighbour)
                    if 0 <= neighbour[axis] < shape[axis] and not seen[neighbour] and int(labels[neighbour]) == label:
                        seen[neighbour] = True
                        queue.append(neighbour)
    return dict(sorted(counts.items()))
