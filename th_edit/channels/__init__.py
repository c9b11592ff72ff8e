"""Channel discovery between attention heads (docs/method.md#singular-components, #composition-scores, #channels).

Weight analysis, no data needed:

    from th_edit.arch import adapter_for
    from th_edit.channels import head_factors, composition_scores, resolve_pair, HeadId

    factors = head_factors(adapter, source)            # per-head OV/QK SVD factors, every query head
    scores = composition_scores(factors)               # q, k, v: full + per-component, all l_A < l_B
    scores.pair(HeadId(20, 0), HeadId(23, 0), "q")     # full score, C_k per sender component, z-scores
    resolve_pair(factors, HeadId(20, 0), HeadId(23, 0), "q").links(3)   # component × component cosines

    # q and k composition through RoPE at query−key offsets (docs/method.md#rotated-composition)
    reads = rotated_reads(adapter, source, offsets_from("1-64"))    # or "5", or ("task", observed offsets)
    composition_scores(factors.with_rotation(reads))
"""

from th_edit.channels.composition import (
    MODES,
    RECEIVER_MATRIX,
    ComponentLink,
    ComponentScore,
    CompositionScores,
    PairScores,
    ReceiverResolution,
    check_modes,
    check_pair,
    composition_scores,
    parse_pair,
    read_side,
    resolve_pair,
)
from th_edit.channels.factors import HeadFactors, HeadId, head_factors, parse_head
from th_edit.channels.rotated import Offsets, RotatedReads, offsets_from, parse_offsets, rotated_reads, task_offsets

__all__ = [
    "MODES", "RECEIVER_MATRIX", "ComponentLink", "ComponentScore", "CompositionScores", "HeadFactors", "HeadId",
    "PairScores", "ReceiverResolution", "check_modes", "check_pair", "composition_scores", "head_factors",
    "parse_head", "parse_pair", "read_side", "resolve_pair", "Offsets", "RotatedReads", "offsets_from", "parse_offsets",
    "rotated_reads", "task_offsets",
]
