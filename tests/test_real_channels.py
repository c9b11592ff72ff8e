"""`th-edit channels` on the offline SmolLM2: roles, channel, draft recipe that `apply` accepts."""

import json

import pytest
from click.testing import CliRunner

from th_edit.cli import main

pytestmark = pytest.mark.real


def test_channels_on_smollm2_finds_the_inhibition_channel_and_drafts_a_recipe(tmp_path):
    out = tmp_path / "channels"
    result = CliRunner().invoke(main, ["--quiet", "channels", "smollm2-135m", "--kind", "inhibition", "--n-prompts", "8",
                                       "--check-prompts", "4", "--pair", "20.0:22.7", "--out", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "channels.json").read_text())
    inhibition = [(h["layer"], h["head"]) for h in record["roles"]["inhibition"]["heads"][:3]]
    assert (20, 0) in inhibition  # the README's finding, on other prompts (8 per N instead of 20)
    entries = record["channels"]["inhibition"]
    assert entries and all(e["z"] >= record["settings"]["z_threshold"] for e in entries)
    assert any(e["data"] is not None for e in entries)  # the data check ran on the channel
    assert {"components.png", "mover-map.png", "weight-vs-data.png"} <= {p.name for p in out.iterdir()}
    applied = CliRunner().invoke(main, ["--quiet", "apply", str(out / "draft-recipe.yaml"), "--no-bench",
                                        "--out", str(tmp_path / "edited")])
    assert applied.exit_code == 0, applied.output
