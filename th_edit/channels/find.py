"""Channel discovery end to end (docs/method.md#channels): roles from data, weight scores, outliers, data check.

    report = find_channels(m, kinds=("inhibition", "duplicate_token"))  # the task: ChannelSettings(task=...)
    report.as_dict()         # what `th-edit channels` writes as channels.json
    draft_edits(report.as_dict())   # the draft recipe's edits

* inhibition channel: per-component Q-composition from the top inhibition candidates (laundry: END
  attends to the second mentions of the repeated items; IOI: END → S2) into the top movers (END →
  the answer, with a positive copy score);
* duplicate-token channel: per-component K- and V-composition from the top duplicate-token and
  induction heads (repeated random tokens) into the top inhibition candidates.
A sender component is part of a channel when its z-score for that receiver (against every component
of every earlier-layer sender) is at least `z_threshold` and it carries at least `min_share` times an
average component's share (1/rank) of the pair's composition, s_k² C_k² / Σ_j s_j² C_j². The
second condition is there because C_k ignores s_k: on Gemma 3 270M (d_head 256) the z-outliers are
mostly tail components with s_k ≈ 1% of s_0 that carry < 0.5% of the composition and whose removal
changes nothing measurable. Each reported component is resolved to the
receiver component it meets best (a single cosine) and checked on data (th_edit.channels.datacheck).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from th_edit import __version__, ui
from th_edit.channels.composition import CompositionScores, PairScores, composition_scores, resolve_pair
from th_edit.channels.datacheck import CONFIRM_TOP, ComponentCheck, Target, check_components
from th_edit.channels.factors import HeadFactors, HeadId, head_factors
from th_edit.channels.roles import RoleRanking, repeated_roles, task_roles
from th_edit.channels.rotated import TASK, UNROTATED, offsets_from, parse_offsets, rotated_reads, task_offsets
from th_edit.errors import UserError
from th_edit.recipe import Edit
from th_edit.session import Session
from th_edit.stats import spearman
from th_edit.tasks import registry
from th_edit.tasks.mentions import locate_mentions

KINDS = ("inhibition", "duplicate_token")
Z_THRESHOLD = 3.0  # a component this many standard deviations above the receiver's earlier-layer mean
MIN_SHARE = 1.0  # ... that also carries at least an average component's share of the pair's composition
DRAFT_SCALE = 2.0  # the draft recipe amplifies inhibition components (the paper: helps long lists)
MAX_PER_PAIR = 4  # reported components per pair and mode, strongest first


@dataclass(frozen=True)
class ChannelSettings:
    task: str = field(default_factory=lambda: registry.objective().name)  # the prompts that define roles and the data check
    n_items: tuple[int, ...] = (3, 4, 5)
    n_prompts: int = 20  # per N (laundry) or in all (IOI)
    n_sequences: int = 40  # repeated random-token sequences (duplicate-token channel)
    top: int = 3  # heads taken from each role
    z_threshold: float = Z_THRESHOLD
    min_share: float = MIN_SHARE  # × 1/rank; 0 keeps every z-outlier
    check_alpha: float = 2.0  # the data check scales each component by 0 and by this
    # QK form of the q and k modes (docs/method.md#rotated-composition): "unrotated", "N", "A-B" or "task"
    offsets: str = "unrotated"
    check_top: int = 2  # per pair: the top components by weight, and as many random others, are checked
    check_prompts: int = 16  # prompts of the data check (balanced over N), each ablation runs them all
    data_check: bool = True
    check_method: str = "attribution"  # "exact": ablate every target; "attribution": estimate all, ablate the top few
    check_confirm: int = CONFIRM_TOP  # attribution: per pair, this many targets (largest estimated effect) ablated
    seed: int = 0
    batch_size: int = 16


@dataclass
class PairReport:
    sender: HeadId
    receiver: HeadId
    mode: str
    channel: str | None  # the channel kind the pair was examined for; None for a --pair
    scores: PairScores
    reported: list[int]  # sender components in the channel (z ≥ threshold), strongest first
    links: dict[int, dict[str, float | int]]  # sender component -> its best receiver component
    checks: list[ComponentCheck] = field(default_factory=list)

    def agreement(self) -> dict[str, object] | None:
        """How well the weight score C_k (and s_k·C_k, the component's actual contribution) ranks the
        checked components like their data scores: Spearman and whether the top one agrees."""
        if len(self.checks) < 2:
            return None
        components = [c.target.component for c in self.checks]
        data = [c.data_score for c in self.checks]
        weights = [c.target.weight_score for c in self.checks]
        weighted = [float(self.scores.sender_singular_values[k]) * w for k, w in zip(components, weights)]
        top_by_data = components[_argmax(data)]
        return {"spearman": spearman(weights, data), "top1_agrees": components[_argmax(weights)] == top_by_data,
                "spearman_weighted": spearman(weighted, data),
                "top1_agrees_weighted": components[_argmax(weighted)] == top_by_data,
                "top_by_weight": components[_argmax(weights)], "top_by_data": top_by_data,
                "n_components": len(self.checks)}

    def entries(self) -> list[dict[str, object]]:
        checked = {c.target.component: c for c in self.checks}
        out = []
        for k in self.reported:
            check = checked.get(k)
            out.append({
                "sender": {"layer": self.sender.layer, "head": self.sender.head, "component": k,
                           "singular_value": float(self.scores.sender_singular_values[k]),
                           "share": float(self.scores.shares[k])},
                "receiver": {"layer": self.receiver.layer, "head": self.receiver.head, **self.links[k]},
                "mode": self.mode, "weight_score": float(self.scores.components[k]), "z": float(self.scores.z[k]),
                "data": None if check is None else {k2: v for k2, v in check.as_dict().items()
                                                    if k2 in ("data_score", "attention_shift", "logit_diff_change", "measured")},
            })
        return out

    def as_dict(self) -> dict[str, object]:
        return {**self.scores.to_dict(), "channel": self.channel, "reported_components": self.reported,
                "links": {str(k): v for k, v in self.links.items()},
                "checks": [c.as_dict() for c in self.checks], "agreement": self.agreement()}


@dataclass
class ChannelReport:
    model: str
    settings: ChannelSettings
    roles: dict[str, RoleRanking]
    pairs: list[PairReport]
    scores: CompositionScores
    factors: HeadFactors

    def channel(self, kind: str) -> list[dict[str, object]]:
        return [e for p in self.pairs if p.channel == kind for e in p.entries()]

    def agreement(self) -> dict[str, object]:
        rows = [a for p in self.pairs if (a := p.agreement()) is not None]
        out: dict[str, object] = {"pairs_checked": len(rows)}
        for suffix in ("", "_weighted"):
            correlations = sorted(r["spearman" + suffix] for r in rows if r["spearman" + suffix] is not None)
            out.update({
                "top1_agreement" + suffix: sum(r["top1_agrees" + suffix] for r in rows) / len(rows) if rows else None,
                "median_spearman" + suffix: correlations[len(correlations) // 2] if correlations else None,
                "mean_spearman" + suffix: sum(correlations) / len(correlations) if correlations else None})
        return out

    def as_dict(self) -> dict[str, object]:
        s = self.settings
        return {
            "th_edit_version": __version__, "model": self.model,
            "settings": {**{k: getattr(s, k) for k in s.__dataclass_fields__}, "n_items": list(s.n_items)},
            "conventions": "components 0-based (largest first) of each head's effective OV/QK; composition "
                           "scores per docs/method.md#composition-scores (baseline 1/sqrt(d_model), z per receiver against every "
                           "component of every earlier-layer sender)",
            "baseline": self.scores.baseline,
            "composition_form": self.scores.form,  # the QK form of the q and k modes (unrotated or offsets)
            "roles": {name: ranking.as_dict(top=10) for name, ranking in self.roles.items()},
            "channels": {kind: self.channel(kind) for kind in KINDS if any(p.channel == kind for p in self.pairs)},
            "pairs": [p.as_dict() for p in self.pairs],
            "agreement": self.agreement(),
        }


def _task_prompts(session: Session, settings: ChannelSettings):
    return registry.get(settings.task).prompts(session.tokenizer, settings.n_items, settings.n_prompts, settings.seed)


def _roles(session: Session, kinds: Sequence[str], settings: ChannelSettings, prompts) -> dict[str, RoleRanking]:
    found = task_roles(session, settings.task, prompts=prompts, batch_size=settings.batch_size)
    names = registry.get(settings.task).role_names
    roles = {"inhibition": found[names["inhibition"]], "mover": found[names["mover"]],
             "negative_mover": found["negative_mover"]}
    if "duplicate_token" in kinds:
        repeated = repeated_roles(session, n_sequences=settings.n_sequences, seed=settings.seed,
                                  batch_size=settings.batch_size)
        roles.update(duplicate_token=repeated["duplicate_token"], induction=repeated["induction"],
                     previous_token=repeated["previous_token"])
    return roles


def _heads(ranking: RoleRanking, top: int) -> list[HeadId]:
    return [HeadId(h.layer, h.head) for h in ranking.top(top)]


def _channel_pairs(kind: str, roles: dict[str, RoleRanking], top: int) -> list[tuple[HeadId, HeadId, str]]:
    if kind == "inhibition":
        senders, receivers, modes = _heads(roles["inhibition"], top), _heads(roles["mover"], top), ("q",)
    else:
        senders = list(dict.fromkeys(_heads(roles["duplicate_token"], top) + _heads(roles["induction"], top)))
        receivers, modes = _heads(roles["inhibition"], top), ("k", "v")
    return [(s, r, mode) for s in senders for r in receivers if s.layer < r.layer for mode in modes]


def _pair_report(scores: CompositionScores, factors: HeadFactors, sender: HeadId, receiver: HeadId, mode: str,
                 channel: str | None, z_threshold: float, min_share: float) -> PairReport:
    pair = scores.pair(sender, receiver, mode)
    order = sorted(range(len(pair.z)), key=lambda k: -float(pair.z[k]))
    shares, floor = pair.shares, min_share / len(pair.z)
    reported = [k for k in order if float(pair.z[k]) >= z_threshold and float(shares[k]) >= floor][:MAX_PER_PAIR]
    resolution = resolve_pair(factors, sender, receiver, mode)
    links = {}
    for k in reported if channel else order[:MAX_PER_PAIR]:
        best = resolution.links(1, sender_component=k)[0]
        links[k] = {"circuit": "qk" if best.receiver_matrix == "QK" else "ov", "component": best.receiver_component,
                    "cosine": best.cosine, "share": best.share}
    return PairReport(sender, receiver, mode, channel, pair, reported, links)


def _targets(pair: PairReport, check_top: int, rng: random.Random) -> list[Target]:
    """The reported components, the top `check_top` by weight, and `check_top` random others."""
    by_weight = sorted(range(len(pair.scores.components)), key=lambda k: -float(pair.scores.components[k]))
    chosen = list(dict.fromkeys(pair.reported + by_weight[:check_top]))
    rest = [k for k in by_weight if k not in chosen]
    chosen += rng.sample(rest, min(check_top, len(rest)))
    return [Target(pair.sender, k, pair.receiver, pair.mode, float(pair.scores.components[k]), float(pair.scores.z[k]))
            for k in chosen]


def find_channels(session: Session, kinds: Sequence[str] = KINDS, settings: ChannelSettings = ChannelSettings(),
                  pairs: Sequence[tuple[HeadId, HeadId]] = ()) -> ChannelReport:
    """Roles, composition scores, channels, receiver resolution and the data check (see module doc)."""
    kinds = tuple(dict.fromkeys(k.replace("-", "_") for k in kinds))
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise UserError(f"unknown channel kind {unknown[0]!r}: use inhibition or duplicate-token")
    if session.tokenizer is None:
        raise UserError("channel discovery needs the model's tokenizer (load it with th_edit.load)")
    offsets_form = parse_offsets(settings.offsets)
    ui.info("composition scores of every head pair (weights only)")
    prompts = _task_prompts(session, settings)
    factors = head_factors(session.adapter, session.parameters)
    scores = composition_scores(_scored_form(session, factors, offsets_form, prompts))
    roles = _roles(session, kinds, settings, prompts)
    reports = [_pair_report(scores, factors, s, r, mode, kind, settings.z_threshold, settings.min_share)
               for kind in kinds for s, r, mode in _channel_pairs(kind, roles, settings.top)]
    for sender, receiver in pairs:
        for mode in ("q", "k", "v"):
            reports.append(_pair_report(scores, factors, sender, receiver, mode, None, settings.z_threshold,
                                        settings.min_share))
    if settings.data_check:
        rng = random.Random(f"channels:{settings.seed}")
        checked = [p for p in reports if p.channel is not None]
        targets = [t for p in checked for t in _targets(p, settings.check_top, rng)]
        results = check_components(session, _balanced(prompts, settings.check_prompts), targets,
                                   (0.0, settings.check_alpha), settings.batch_size, settings.check_method,
                                   settings.check_confirm)
        for check in results:
            for p in checked:
                t = check.target
                if (p.sender, p.receiver, p.mode) == (t.sender, t.receiver, t.mode):
                    p.checks.append(check)
    return ChannelReport(session.reference, settings, roles, reports, scores, factors)


def _scored_form(session: Session, factors: HeadFactors, form: str, prompts) -> HeadFactors:
    """The factors whose q and k modes are scored through RoPE at the offsets of `form` (unchanged when unrotated)."""
    if form == UNROTATED:
        return factors
    observed = task_offsets([m for _, m in locate_mentions(session.tokenizer, prompts)[0]]) if form == TASK else ()
    return factors.with_rotation(rotated_reads(session.adapter, session.parameters, offsets_from(form, observed)))


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def _balanced(prompts, count: int):
    """`count` prompts taken in turn from each N (generated prompts come grouped by N)."""
    by_n: dict[int, list] = {}
    for prompt in prompts:
        by_n.setdefault(prompt.n_items, []).append(prompt)
    chosen = [group[i] for i in range(max(map(len, by_n.values()))) for group in by_n.values() if i < len(group)]
    return chosen[:count]


def draft_edits(record: dict, scale: float = DRAFT_SCALE) -> list[Edit]:
    """The draft recipe of a channels.json: every inhibition-channel sender component amplified by `scale`."""
    components: dict[tuple[int, int], list[int]] = {}
    for entry in record.get("channels", {}).get("inhibition", []):
        sender = entry["sender"]
        found = components.setdefault((int(sender["layer"]), int(sender["head"])), [])
        if int(sender["component"]) not in found:
            found.append(int(sender["component"]))
    return [Edit(layer=layer, head=head, circuit="ov", components=sorted(ks), scale=scale)
            for (layer, head), ks in sorted(components.items())]
