"""One recorded forward pass over laundry prompts: what happens at the last token.

For the layers asked for, at the last token of every prompt: each head's z (its attention-
weighted values, before the output projection), the layer's output scale (Gemma's post-attention
norm; 1 elsewhere), and the attention each head pays to every item's first and second mention;
plus the candidates' logits. Everything the subspace analysis needs comes from these records:
a head's output at the last token, as it lands in the residual stream, is z_h W_O^eff[h] · scale.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch

from th_edit import hooks, ui
from th_edit.arch import Adapter
from th_edit.errors import UserError
from th_edit.heads import HeadId
from th_edit.runtime import batched, pad_id, tokenize_prompts
from th_edit.subspace.items import ItemTokens, locate_items
from th_edit.tasks import registry
from th_edit.tasks.prompts import TaskPrompt

Head = HeadId  # a head is a th_edit.heads.HeadId everywhere


@dataclass
class Survey:
    prompts: list[TaskPrompt]
    layers: list[int]  # the recorded layers, ascending
    items: list[ItemTokens]
    z: torch.Tensor  # [P, len(layers), H, dh] float64, last token
    scale: torch.Tensor  # [P, len(layers)] float64
    first_attention: list[torch.Tensor]  # per prompt [len(layers), H, N]: last token → each item's first mention
    second_attention: list[torch.Tensor]  # per prompt [len(layers), H, N]: → its second mention (0 for the answer)
    candidate_logits: list[torch.Tensor]  # per prompt [N], first tokens of the candidates

    def _index(self, layer: int) -> int:
        if layer not in self.layers:
            raise ValueError(f"layer {layer} was not recorded (recorded: {self.layers})")
        return self.layers.index(layer)

    def head_outputs(self, session, heads: Sequence[Head]) -> torch.Tensor:
        """[P, len(heads), d] float64: what each head adds to the residual stream at the last token."""
        outputs = []
        for layer, head in heads:
            i = self._index(layer)
            W_O = session.weights(layer).W_O[head]  # [dh, d], post-attention norm weight folded in
            outputs.append((self.z[:, i, head] @ W_O) * self.scale[:, i, None])
        return torch.stack(outputs, dim=1)

    def item_attention(self, heads: Sequence[Head], mentions: str = "all") -> list[torch.Tensor]:
        """Per prompt [N]: attention from the last token to each item, summed over `heads`;
        `mentions` = "first", "second" or "all" (both mentions of the item)."""
        result = []
        for first, second in zip(self.first_attention, self.second_attention):
            total = torch.zeros(first.shape[-1], dtype=torch.float64)
            for layer, head in heads:
                i = self._index(layer)
                if mentions in ("first", "all"):
                    total += first[i, head]
                if mentions in ("second", "all"):
                    total += second[i, head]
            result.append(total)
        return result

    @property
    def candidate_correct(self) -> torch.Tensor:
        """[P] bool: the answer's logit beats every other item's (candidate accuracy)."""
        return torch.tensor([int(logits.argmax()) == p.answer_position
                             for logits, p in zip(self.candidate_logits, self.prompts)])

    @property
    def n_items(self) -> torch.Tensor:
        return torch.tensor([p.n_items for p in self.prompts])

    @property
    def answer_positions(self) -> torch.Tensor:
        return torch.tensor([p.answer_position for p in self.prompts])


def laundry_items(tokenizer, prompts: Sequence[TaskPrompt], max_length: int | None
                  ) -> tuple[list[TaskPrompt], list[list[int]], list[list[int]], list[ItemTokens]]:
    """Tokenized prompts with their item positions; prompts whose tokens do not show the laundry
    shape (see locate_items) are left out with a warning."""
    if any(not registry.get(p.task).list_recall for p in prompts):
        raise UserError("the subspace analysis needs list-recall prompts (laundry)")
    tokenized = tokenize_prompts(tokenizer, prompts, max_length=max_length)
    kept: tuple[list, list, list, list] = ([], [], [], [])
    for prompt, ids, (candidates, answer) in zip(prompts, tokenized.encoded, tokenized.targets):
        try:
            items = locate_items(ids, candidates, answer)
        except ValueError:
            continue
        for bucket, value in zip(kept, (prompt, ids, candidates, items)):
            bucket.append(value)
    if len(kept[0]) < len(prompts):
        ui.warn(f"{len(prompts) - len(kept[0])} of {len(prompts)} prompts do not tokenize into one token per item "
                "mention and were left out")
    if not kept[0]:
        raise UserError("no laundry prompt tokenizes into one token per item mention for this tokenizer")
    return kept[0], kept[1], kept[2], kept[3]


@contextmanager
def output_scales(model: torch.nn.Module, adapter: Adapter, layers: Sequence[int]) -> Iterator[dict[int, list]]:
    """Record, per layer, the output scale at the last token (adapter.output_scale of the output
    projection's output), one [B] tensor per forward pass."""
    record: dict[int, list[torch.Tensor]] = defaultdict(list)
    with ExitStack() as stack:
        for layer in layers:
            def keep(module, args, output, layer=layer):
                record[layer].append(adapter.output_scale(layer, output[:, -1].detach())[..., 0].double().cpu())
            handle = model.get_submodule(adapter.output_projection_module(layer)).register_forward_hook(keep)
            stack.callback(handle.remove)
        yield record


def survey(session, prompts: Sequence[TaskPrompt], layers: Sequence[int], batch_size: int = 16,
           desc: str = "recording") -> Survey:
    """Run `session`'s model over laundry `prompts` once, recording `layers` at the last token."""
    layers = sorted(set(layers))
    for layer in layers:
        session.adapter.check_head(layer, 0)
    prompts, encoded, candidates, items = laundry_items(session.tokenizer, prompts, session.max_length)
    pad = pad_id(session.tokenizer)
    n = len(prompts)
    H, dh = session.adapter.n_heads, session.adapter.d_head
    z = torch.zeros(n, len(layers), H, dh, dtype=torch.float64)
    scale = torch.zeros(n, len(layers), dtype=torch.float64)
    first: list[torch.Tensor | None] = [None] * n
    second: list[torch.Tensor | None] = [None] * n
    logits: list[torch.Tensor | None] = [None] * n
    model, adapter = session.model, session.adapter
    with torch.inference_mode():
        for indices, batch in batched(encoded, batch_size, pad, session.device, desc=desc):
            width = batch["input_ids"].shape[1]
            with hooks.recording(model, adapter, layers, attention=True, z=True, positions=-1) as rec, \
                    output_scales(model, adapter, layers) as scales:
                last = model(**batch, logits_to_keep=1).logits[:, -1].double().cpu()
            for row, i in enumerate(indices):
                offset = width - len(encoded[i])
                z[i] = torch.stack([rec.z[layer][0][row, 0] for layer in layers]).double()
                scale[i] = torch.stack([scales[layer][0][row] for layer in layers])
                pattern = torch.stack([rec.attention[layer][0][row, :, 0] for layer in layers]).double()  # [L, H, T]
                first[i] = pattern[..., [offset + t for t in items[i].first]]
                second[i] = torch.stack([pattern[..., offset + t] if t is not None else torch.zeros(len(layers), H,
                                         dtype=torch.float64) for t in items[i].second], dim=-1)
                logits[i] = last[row, candidates[i]]
    return Survey(prompts, layers, items, z, scale, first, second, logits)  # type: ignore[arg-type]
