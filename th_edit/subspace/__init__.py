"""The positional-index subspace: where the inhibition channel writes which list item to skip.

    import th_edit
    m = th_edit.load("smollm2-135m")
    result = th_edit.subspace.analyze(m, components=[(20, 0, 0), (17, 5, 1), (20, 0, 1)],
                                      movers=[(23, 0), (23, 1), (23, 7)])
    record = result.to_dict()                      # what subspace.json holds
    print(th_edit.subspace.summary(record))
    th_edit.subspace.write_outputs(record, "out/subspace")   # JSON, PNGs, self-contained HTML

Pieces, usable on their own: `survey` (one recorded pass at the last token), `weight_basis` /
`data_basis` / `principal_angles`, `SubspaceIntervention` (hooks that set the sender heads'
signal in the subspace to chosen points) and `select` (what the movers attend to and what the
model predicts at each point), `crowding`. Definitions: th_edit/subspace/analysis.py.
"""

from th_edit.subspace.analysis import BASES, DEFINITIONS, SubspaceResult, analyze
from th_edit.subspace.basis import Basis, data_basis, principal_angles, variance_shares, weight_basis, write_directions
from th_edit.subspace.crowding import crowding, spearman
from th_edit.subspace.items import ItemTokens, locate_items
from th_edit.subspace.report import OUTPUT_FILES, check_outputs, summary, write_outputs
from th_edit.subspace.select import choose as choose_fallback
from th_edit.subspace.spec import check_channel, parse_components, parse_heads, read_channels
from th_edit.subspace.survey import Survey, survey
from th_edit.subspace.traverse import MODES, Selections, SubspaceIntervention, grid_axes, grid_points, regions, select

__all__ = [
    "BASES", "DEFINITIONS", "MODES", "OUTPUT_FILES", "Basis", "ItemTokens", "Selections", "SubspaceIntervention",
    "SubspaceResult", "Survey", "analyze", "check_channel", "check_outputs", "choose_fallback", "crowding", "data_basis",
    "grid_axes", "grid_points", "locate_items", "parse_components", "parse_heads", "principal_angles", "read_channels",
    "regions", "select", "spearman", "summary", "survey", "variance_shares", "weight_basis", "write_directions",
    "write_outputs",
]
