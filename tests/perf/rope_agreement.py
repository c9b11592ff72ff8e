"""Measurement (run by hand): do RoPE-aware composition scores agree better with the data check? (issue 23)

    python tests/perf/rope_agreement.py RESULTS/channels.json [more channels.json ...] [--json OUT]

Reads a channels.json written by `th-edit channels` WITH its data check (the checked components of every
channel pair and their data scores: |attention shift| when the component is removed), loads the same model
(weights, tokenizer) and the same task prompts (the run's settings), and scores each checked component
with several weight-only forms (docs/method.md#rotated-composition):

  unrotated        today's C_k (cross-checked against the weight scores stored in channels.json)
  task             through RoPE at the END-to-mention offsets of the task prompts, weighted by frequency
  1-64             through RoPE, uniform over offsets 1..64
  task+emb         task, with the other side of QK_Δ (the keys in q mode, the query in k mode) read through
                   the second moment of the input-normed token embeddings instead of the whole residual
                   stream: C_k² = v_kᵀ W G Wᵀ v_k / tr(Wᵀ W G), G = Σ_Δ w_Δ R(Δ) W_oᵀ Σ_E W_o R(Δ)ᵀ
  (v mode has no rotation: every form scores it as today)

Each form also in an "attn" reading: the data score is the receiver's attention shift, which only Q- and
K-composition cause directly, and a k- or v-mode check removes the component at every position (the
receiver's query at END as well as its keys), so those pairs are scored by √(C_q² + C_k²) of that form.
For each also the score times what the component carries: s_k·C_k (as channels.json's
"_weighted" agreement) and s_k·‖Σ_E^½ u_k‖·C_k ("×input": what the sender writes along v_k when it reads
the embedding distribution). Per form: top-1 agreement (the component with the highest weight score is the
one with the highest data score, per pair with ≥ 2 checked components), median Spearman ρ (pairs with ≥ 3),
per mode, and the pairs where the best form still disagrees.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from th_edit.channels import HeadId, composition_scores, head_factors
from th_edit.channels.find import ChannelSettings, _task_prompts
from th_edit.channels.rotated import offset_gram, offsets_from, rotated_reads, task_offsets
from th_edit.session import load
from th_edit.stats import spearman
from th_edit.tasks.mentions import locate_mentions

LIBRARY_FORMS = ("unrotated", "task", "1-64")


def head_id(text: str) -> HeadId:
    layer, head = text.split(".")
    return HeadId(int(layer), int(head))


_MOMENTS: dict[tuple, torch.Tensor] = {}


def embedding_moment(session, layer: int) -> torch.Tensor:
    """Σ_E = Ẽᵀ Ẽ / V of the token embeddings as `layer`'s input norm normalizes them (d×d, float64).
    The normalization (before the norm's weight) depends only on the norm's kind and eps: computed once each,
    in chunks of 16k tokens."""
    norm = session.adapter.input_norm(layer)
    key = (norm.kind, norm.eps)
    if key not in _MOMENTS:
        E = session.parameters.get(session.adapter.embedding_param())
        total = torch.zeros(E.shape[1], E.shape[1], dtype=torch.float64)
        for start in range(0, E.shape[0], 16384):
            chunk = norm.normalize(E[start:start + 16384].double())
            total += chunk.T @ chunk
        _MOMENTS[key] = total / E.shape[0]
    return _MOMENTS[key]


def gram_scores(session, pair: dict, offsets, factors) -> torch.Tensor:
    """[r] C_k of one pair with the other side of QK_Δ read through Σ_E (q, k modes); v: as today."""
    sender, receiver, mode = head_id(pair["sender"]), head_id(pair["receiver"]), pair["mode"]
    V = factors.ov.V[sender.layer, sender.head].double()  # [d, r] write directions
    if mode == "v":
        return torch.tensor(pair["components"], dtype=torch.float64)
    w = session.adapter.layer_weights(session.parameters, receiver.layer, dtype=torch.float64)
    rotary = session.adapter.rotary(receiver.layer)
    deltas = torch.tensor(list(offsets.weights), dtype=torch.float64)
    weights = torch.tensor(list(offsets.weights.values()), dtype=torch.float64)
    rotations = rotary.rotation(deltas) if rotary is not None else torch.eye(w.W_Q.shape[-1], dtype=torch.float64)[None]
    if rotary is None:
        weights = torch.ones(1, dtype=torch.float64)
    S = embedding_moment(session, receiver.layer)
    reads, other = (w.W_Q, w.W_K) if mode == "q" else (w.W_K, w.W_Q)
    W, O = reads[receiver.head], other[receiver.head]
    G = offset_gram(O.T @ S @ O, rotations, weights, transpose=mode == "k")
    a = V.T @ W  # [r, dh]
    return (torch.einsum("ri,ij,rj->r", a, G, a) / torch.trace(W.T @ W @ G)).clamp_min(0).sqrt()


def input_magnitude(session, pair: dict, factors) -> torch.Tensor:
    """[r] s_k ‖Σ_E^½ u_k‖: the RMS of what the sender writes along v_k when it reads the embeddings."""
    sender = head_id(pair["sender"])
    S = embedding_moment(session, sender.layer)
    U = factors.ov.U[sender.layer, sender.head].double()
    return factors.ov.S[sender.layer, sender.head].double() * torch.einsum("dr,de,er->r", U, S, U).clamp_min(0).sqrt()


def agreement(rows: list[tuple[dict, list[float]]]) -> dict[str, object]:
    """rows: (pair, weight score per checked component, in check order) → top-1 rate, median ρ, per mode."""
    out: dict[str, object] = {}
    for mode in (None, "q", "k", "v"):
        top1, rhos = [], []
        for pair, weight in rows:
            if mode and pair["mode"] != mode or len(pair["checks"]) < 2:
                continue
            data = [c["data_score"] for c in pair["checks"]]
            top1.append(max(range(len(data)), key=weight.__getitem__) == max(range(len(data)), key=data.__getitem__))
            if (rho := spearman(weight, data)) is not None:
                rhos.append(rho)
        rhos.sort()
        key = mode or "all"
        out[key] = {"pairs": len(top1), "top1": sum(top1) / len(top1) if top1 else None,
                    "median_spearman": rhos[len(rhos) // 2] if rhos else None}
    return out


def measure(path: Path) -> dict[str, object]:
    record = json.loads(path.read_text())
    settings = dict(record["settings"])
    settings["n_items"] = tuple(settings["n_items"])
    settings = ChannelSettings(**{k: v for k, v in settings.items() if k in ChannelSettings.__dataclass_fields__})
    session = load(record["model"])
    pairs = [p for p in record["pairs"] if p.get("channel") and p["checks"]]
    mentions = [m for _, m in locate_mentions(session.tokenizer, _task_prompts(session, settings))[0]]
    task = offsets_from("task", task_offsets(mentions))
    factors = head_factors(session.adapter, session.parameters)
    scores = {}
    for form in LIBRARY_FORMS:
        rotated = None if form == "unrotated" else rotated_reads(session.adapter, session.parameters,
                                                                 offsets_from(form, task_offsets(mentions)))
        scores[form] = composition_scores(factors.with_rotation(rotated), ("q", "k", "v"))
    table: dict[str, object] = {}
    worst = 0.0
    variants: dict[str, list] = {}
    for pair in pairs:
        sender, receiver, mode = head_id(pair["sender"]), head_id(pair["receiver"]), pair["mode"]
        ks = [c["sender"]["component"] for c in pair["checks"]]
        s = factors.ov.S[sender.layer, sender.head].double()
        magnitude = input_magnitude(session, pair, factors)
        by_mode = {f: {m: scores[f].pair(sender, receiver, m).components for m in ("q", "k", "v")} for f in LIBRARY_FORMS}
        by_mode["task+emb"] = {m: gram_scores(session, {**pair, "mode": m}, task, factors) for m in ("q", "k", "v")}
        stored = torch.tensor([c["weight_score"] for c in pair["checks"]], dtype=torch.float64)
        worst = max(worst, float((by_mode["unrotated"][mode][ks] - stored).abs().max()))
        for form, C in by_mode.items():
            # "attn": the data score is an attention shift, which only Q- and K-composition cause directly; a
            # k or v check removes the component at every position, so from the receiver's query and keys alike.
            readings = {"": C[mode], " attn": C["q"] if mode == "q" else (C["q"].square() + C["k"].square()).sqrt()}
            for reading, score in readings.items():
                for suffix, factor in (("C", torch.ones_like(s)), ("s·C", s), ("×input·C", magnitude)):
                    name = f"{form}{reading} {suffix}"
                    variants.setdefault(name, []).append((pair, [float(factor[k] * score[k]) for k in ks]))
    for name, rows in variants.items():
        table[name] = agreement(rows)
    best = max(table, key=lambda n: (table[n]["all"]["top1"] or 0, table[n]["all"]["median_spearman"] or -1))
    disagreements = []
    for pair, weight in variants[best]:
        if len(pair["checks"]) < 2:
            continue
        data = [c["data_score"] for c in pair["checks"]]
        ks = [c["sender"]["component"] for c in pair["checks"]]
        by_weight = sorted(range(len(ks)), key=lambda i: -weight[i])
        top_data = max(range(len(data)), key=data.__getitem__)
        if by_weight[0] != top_data:
            disagreements.append({"pair": f"{pair['sender']}→{pair['receiver']} {pair['mode']}", "channel": pair["channel"],
                                  "top_by_weight": ks[by_weight[0]], "top_by_data": ks[top_data],
                                  "data_top_rank_by_weight": by_weight.index(top_data) + 1, "checked": len(ks),
                                  "data_ratio": data[by_weight[0]] / data[top_data] if data[top_data] else None})
    return {"model": record["model"], "channels_json": str(path), "task_offsets": task.as_dict(),
            "stored_agreement": record.get("agreement"), "max_unrotated_vs_stored": worst, "table": table,
            "best": best, "disagreements_of_best": disagreements}


def show(result: dict[str, object]) -> None:
    offs = result["task_offsets"]["offsets"]
    print(f"\n{result['model']}  ({result['channels_json']})")
    print(f"task offsets: {len(offs)} distinct, {min(map(int, offs))}..{max(map(int, offs))}; "
          f"unrotated scores vs stored weight_score: max |diff| {result['max_unrotated_vs_stored']:.2e}")
    stored = result["stored_agreement"] or {}
    print(f"stored agreement (channels.json): top-1 {stored.get('top1_agreement')}, "
          f"weighted {stored.get('top1_agreement_weighted')}")
    print(f"{'form':<27} {'pairs':>5} {'top-1':>6} {'med ρ':>6} | {'q top-1':>7} {'k top-1':>7} {'v top-1':>7}")
    for name, row in result["table"].items():
        def f(x):
            return "  -  " if x is None else f"{x:6.2f}"
        print(f"{name:<27} {row['all']['pairs']:>5} {f(row['all']['top1'])} {f(row['all']['median_spearman'])} | "
              f"{f(row['q']['top1']):>7} {f(row['k']['top1']):>7} {f(row['v']['top1']):>7}")
    print(f"best: {result['best']}; its disagreements ({len(result['disagreements_of_best'])}):")
    for d in result["disagreements_of_best"]:
        ratio = "-" if d["data_ratio"] is None else f"{d['data_ratio']:.2f}"
        print(f"  {d['pair']:<18} {d['channel']:<16} weight top {d['top_by_weight']:>3}, data top {d['top_by_data']:>3} "
              f"(rank {d['data_top_rank_by_weight']} of {d['checked']} by weight; data(weight top)/data(top) {ratio})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("channels", nargs="+", type=Path)
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    args = parser.parse_args()
    results = [measure(path) for path in args.channels]
    for result in results:
        show(result)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
