"""`th-edit channels`: the data check, the channel report and its schema, the draft recipe, the command."""

import dataclasses
import json
import math
import re
from pathlib import Path

import pytest
import torch
import yaml
from cli_helpers import one_line_error, run_cli
from click.testing import CliRunner
from tiny import tiny_checkpoint

import th_edit
from th_edit.channels.datacheck import Target, _measure, _Prompts, check_components, estimate_derivatives
from th_edit.channels.factors import HeadId
from th_edit.channels.find import ChannelSettings, draft_edits, find_channels
from th_edit.cli import main
from th_edit.recipe import Edit
from th_edit.stats import spearman
from th_edit.tasks.laundry import generate_laundry

SETTINGS = ChannelSettings(n_items=(3,), n_prompts=6, n_sequences=6, top=2, z_threshold=1.0, check_top=2)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "m", "llama", seed=2, num_hidden_layers=4)


@pytest.fixture(scope="module")
def session(checkpoint):
    return th_edit.load(str(checkpoint))


def _prompts(session):
    return generate_laundry(session.tokenizer, [3, 4], 4, 0)


def test_data_check_with_scale_one_changes_nothing(session):
    targets = [Target(HeadId(1, 2), 0, HeadId(3, 1), "q", 0.0, 0.0), Target(HeadId(0, 4), 1, HeadId(2, 0), "k", 0.0, 0.0)]
    checks = check_components(session, _prompts(session), targets, alphas=(1.0,))
    for check in checks:
        assert check.attention_shift[1.0] == 0.0 and check.logit_diff_change[1.0] == 0.0
        assert check.attention_shift[0.0] != 0.0  # removing it does something


def test_data_check_removal_at_every_position_equals_the_weight_edit(session):
    """K/V-mode checks act at every position: removing component k by hook == ablating it in the weights."""
    target = Target(HeadId(1, 2), 0, HeadId(3, 1), "v", 0.0, 0.0)
    (check,) = check_components(session, _prompts(session), [target], alphas=())
    with torch.inference_mode(), th_edit.hooks.eager_attention(session.model):
        batched = _Prompts(session, _prompts(session), 16)
        base, base_ld = _measure(session, batched, [target.receiver])
        with session.edited([Edit(layer=1, head=2, circuit="ov", components=[0], scale=0.0)]):
            edited, edited_ld = _measure(session, batched, [target.receiver])
    assert check.attention_shift[0.0] == pytest.approx(float((edited[target.receiver] - base[target.receiver]).mean()),
                                                       abs=1e-6)
    assert check.logit_diff_change[0.0] == pytest.approx(float((edited_ld - base_ld).mean()), abs=1e-5)


# Two pairs (Q mode: the last token; V mode: every position) with several components each, and one sender
# component shared by two receivers.
PAIRED_TARGETS = [Target(HeadId(1, 2), k, HeadId(3, 1), "q", 0.0, 0.0) for k in (0, 1, 2, 3)] + \
                 [Target(HeadId(0, 4), k, HeadId(2, 0), "v", 0.0, 0.0) for k in (0, 1, 2)] + \
                 [Target(HeadId(0, 4), 1, HeadId(3, 1), "k", 0.0, 0.0)]


def test_attribution_estimate_equals_the_finite_difference_of_the_exact_ablation(session):
    """The first-order estimate of each component's effect is the derivative of the exact (hooked)
    measurement: (exact(1 + ε) − exact(1 − ε)) / 2ε, for the receiver's preference and the logit difference."""
    eps = 1e-2
    prompts = _prompts(session)
    with torch.no_grad(), th_edit.hooks.eager_attention(session.model):
        derivatives = estimate_derivatives(session, _Prompts(session, prompts, 5), PAIRED_TARGETS)  # several batches
    exact = check_components(session, prompts, PAIRED_TARGETS, alphas=(1 + eps, 1 - eps), method="exact")
    for check in exact:
        d_shift, d_logit_diff = derivatives[check.target]
        finite_shift = (check.attention_shift[1 + eps] - check.attention_shift[1 - eps]) / (2 * eps)
        finite_logit_diff = (check.logit_diff_change[1 + eps] - check.logit_diff_change[1 - eps]) / (2 * eps)
        assert abs(finite_shift) > 1e-5 and abs(finite_logit_diff) > 1e-3  # the component matters (random model)
        assert d_shift == pytest.approx(finite_shift, rel=2e-2, abs=1e-7)
        assert d_logit_diff == pytest.approx(finite_logit_diff, rel=2e-2, abs=1e-5)


def test_attribution_check_confirms_its_top_components_by_exact_ablation(session):
    prompts = _prompts(session)
    exact = {c.target: c for c in check_components(session, prompts, PAIRED_TARGETS, alphas=(0.0, 2.0), method="exact")}
    checks = check_components(session, prompts, PAIRED_TARGETS, alphas=(0.0, 2.0), method="attribution", confirm_top=2)
    by_pair: dict = {}
    for check in checks:
        by_pair.setdefault((check.target.sender, check.target.receiver, check.target.mode), []).append(check)
        estimate = check.estimated_shift
        assert estimate[2.0] == pytest.approx(-estimate[0.0])  # first order: (α − 1)·derivative
        assert check.attention_shift[2.0] == estimate[2.0] and 2.0 not in check.measured
        truth = exact[check.target]
        if 0.0 in check.measured:  # ablated exactly: today's exact numbers
            assert check.attention_shift[0.0] == pytest.approx(truth.attention_shift[0.0], abs=1e-6)
            assert check.logit_diff_change[0.0] == pytest.approx(truth.logit_diff_change[0.0], abs=1e-5)
        else:
            assert check.attention_shift[0.0] == estimate[0.0]
    for group in by_pair.values():
        ranked = sorted(group, key=lambda c: -abs(c.estimated_shift[0.0]))
        assert all(0.0 in c.measured for c in ranked[:2])  # the top two by estimate of every pair
    # V-mode 0.4 component 1 was confirmed for its V pair; the same ablation serves its K check of 3.1.
    shared = next(c for c in checks if c.target.mode == "k")
    confirmed_v = any(0.0 in c.measured for c in by_pair[(HeadId(0, 4), HeadId(2, 0), "v")] if c.target.component == 1)
    assert (0.0 in shared.measured) == (confirmed_v or shared in sorted(
        by_pair[(HeadId(0, 4), HeadId(3, 1), "k")], key=lambda c: -abs(c.estimated_shift[0.0]))[:2])


@pytest.mark.pipeline
def test_exact_check_measures_every_target_and_attribution_checks_the_same_ones(session):
    """--data-check exact is today's check (every target removed and scaled by hook); attribution checks
    the same targets, each of its measured numbers being the exact one."""
    exact = find_channels(session, settings=dataclasses.replace(SETTINGS, check_method="exact"))
    fast = find_channels(session, settings=SETTINGS)
    assert SETTINGS.check_method == "attribution" and exact.as_dict()["settings"]["check_method"] == "exact"
    exact_checks = {(c.target, c.target.mode): c for p in exact.pairs for c in p.checks}
    assert exact_checks and all(c.measured == {0.0, SETTINGS.check_alpha} and not c.estimated_shift
                                for c in exact_checks.values())
    fast_checks = {(c.target, c.target.mode): c for p in fast.pairs for c in p.checks}
    assert set(fast_checks) == set(exact_checks)
    assert any(0.0 in c.measured for c in fast_checks.values())
    for key, check in fast_checks.items():
        if 0.0 in check.measured:
            assert check.data_score == pytest.approx(exact_checks[key].data_score, abs=1e-6)


@pytest.mark.pipeline
def test_channel_report_schema_and_draft(session):
    report = find_channels(session, settings=SETTINGS, pairs=[(HeadId(0, 1), HeadId(3, 2))])
    record = json.loads(json.dumps(report.as_dict(), allow_nan=False))  # strict JSON
    assert {"roles", "channels", "pairs", "agreement", "baseline", "settings"} <= set(record)
    assert {"inhibition", "mover", "duplicate_token", "induction"} <= set(record["roles"])
    for pair in record["pairs"]:
        assert len(pair["components"]) == session.info.d_head  # the full per-component vector
        assert pair["sender"] < pair["receiver"] or int(pair["sender"].split(".")[0]) < int(pair["receiver"].split(".")[0])
    user = [p for p in record["pairs"] if p["channel"] is None]
    assert {p["mode"] for p in user} == {"q", "k", "v"}
    for kind, entries in record["channels"].items():
        for entry in entries:
            assert entry["z"] >= SETTINGS.z_threshold
            assert entry["sender"]["layer"] < entry["receiver"]["layer"]
            assert entry["receiver"]["circuit"] == ("ov" if entry["mode"] == "v" else "qk")
            assert entry["data"] is not None  # every reported component was checked on data
    inhibition = record["channels"].get("inhibition", [])
    draft = draft_edits(record)
    assert {(e.layer, e.head, k) for e in draft for k in e.components} == {
        (x["sender"]["layer"], x["sender"]["head"], x["sender"]["component"]) for x in inhibition}
    assert all(e.scale == 2.0 and e.circuit == "ov" for e in draft)


def test_channel_components_carry_their_share_of_the_composition(session):
    """A z-outlier joins a channel only if it carries ≥ min_share/rank of the pair's composition."""
    base = dict(n_items=(3,), n_prompts=6, n_sequences=6, top=3, z_threshold=0.5, data_check=False)
    z_only = find_channels(session, settings=ChannelSettings(**base, min_share=0.0))
    shared = find_channels(session, settings=ChannelSettings(**base, min_share=1.0))
    rank = session.info.d_head
    by_pair = {(p.sender, p.receiver, p.mode): p for p in z_only.pairs}
    dropped = 0
    for pair in shared.pairs:
        wide = by_pair[pair.sender, pair.receiver, pair.mode]
        eligible = [k for k in sorted(range(rank), key=lambda k: -float(wide.scores.z[k]))
                    if float(wide.scores.z[k]) >= 0.5 and float(pair.scores.shares[k]) >= 1 / rank]
        assert pair.reported == eligible[:len(pair.reported)] and len(pair.reported) == min(len(eligible), 4)
        dropped += len(set(wide.reported) - set(pair.reported))
    assert dropped > 0  # the premise: some z-outliers carry less than an average share
    for entry in shared.as_dict()["channels"].get("duplicate_token", []):
        assert entry["sender"]["share"] >= 1 / rank


@pytest.mark.pipeline
def test_agreement_ranks_by_the_score_and_by_what_the_component_carries(session):
    report = find_channels(session, settings=SETTINGS)
    rows = [(p, a) for p in report.pairs if (a := p.agreement()) is not None]
    assert rows
    for pair, agreement in rows:
        ks = [c.target.component for c in pair.checks]
        data = [c.data_score for c in pair.checks]
        weighted = [float(pair.scores.sender_singular_values[k] * pair.scores.components[k]) for k in ks]
        assert agreement["spearman_weighted"] == spearman(weighted, data)
        assert agreement["top1_agrees_weighted"] == (ks[weighted.index(max(weighted))] == ks[data.index(max(data))])
    overall = report.agreement()
    assert overall["pairs_checked"] == len(rows)
    assert overall["top1_agreement_weighted"] == sum(a["top1_agrees_weighted"] for _, a in rows) / len(rows)


def test_channels_record_the_rotated_form_they_scored(session):
    """--offsets task: the q and k scores are the rotated ones at the prompts' END-to-mention offsets, and say so."""
    from dataclasses import replace

    from th_edit.channels import composition_scores, head_factors
    from th_edit.channels.find import _task_prompts
    from th_edit.channels.rotated import offsets_from, rotated_reads, task_offsets
    from th_edit.tasks.mentions import locate_mentions

    settings = replace(SETTINGS, offsets="task", data_check=False)
    record = find_channels(session, settings=settings).as_dict()
    mentions = [m for _, m in locate_mentions(session.tokenizer, _task_prompts(session, settings))[0]]
    offsets = offsets_from("task", task_offsets(mentions))
    assert record["composition_form"] == json.loads(json.dumps(offsets.as_dict())) and record["settings"]["offsets"] == "task"
    assert len(offsets.weights) > 1 and min(offsets.weights) > 0
    factors = head_factors(session.adapter, session.parameters)
    rotated = composition_scores(factors.with_rotation(rotated_reads(session.adapter, session.parameters, offsets)))
    unrotated = composition_scores(factors)
    pairs = [p for p in record["pairs"] if p["mode"] in ("q", "k")]
    assert pairs
    for p in pairs:
        sender, receiver = (HeadId(*map(int, p[key].split("."))) for key in ("sender", "receiver"))
        want = rotated.pair(sender, receiver, p["mode"]).components
        torch.testing.assert_close(torch.tensor(p["components"], dtype=want.dtype), want)
    assert any(not torch.allclose(torch.tensor(p["components"], dtype=torch.float64),
                                  unrotated.pair(*(HeadId(*map(int, p[k].split("."))) for k in ("sender", "receiver")),
                                                 p["mode"]).components, atol=1e-4) for p in pairs)
    assert find_channels(session, settings=replace(settings, offsets="unrotated")).as_dict()["composition_form"] == {
        "form": "unrotated"}
    from th_edit.channels.render import render_channels

    assert "through RoPE at offsets task" in render_channels(find_channels(session, settings=settings))


@pytest.mark.cli
def test_channels_command_writes_everything_and_apply_accepts_the_draft(checkpoint, tmp_path):
    out = tmp_path / "ch"
    args = ["--quiet", "channels", str(checkpoint), "--n-items", "3", "--n-prompts", "6", "--top", "2",
            "--z-threshold", "1", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "inhibition channel" in result.stdout and "roles" in result.stdout
    record = json.loads((out / "channels.json").read_text())
    assert record["settings"]["check_method"] == "attribution"  # the default
    checks = [c for p in record["pairs"] for c in p["checks"]]
    assert checks and all("estimated_attention_shift" in c for c in checks)
    assert any("0.0" in c["measured"] for c in checks)
    for name in ("components.png", "mover-map.png", "weight-vs-data.png"):
        assert (out / name).stat().st_size > 1000, name
    if record["channels"].get("inhibition"):
        recipe = yaml.safe_load((out / "draft-recipe.yaml").read_text())
        assert recipe["base_model"] == str(checkpoint)
        applied = CliRunner().invoke(main, ["--quiet", "apply", str(out / "draft-recipe.yaml"), "--out", str(tmp_path / "e")])
        assert applied.exit_code == 0, applied.output
    again = CliRunner().invoke(main, args)  # existing outputs are not overwritten without --force
    assert again.exit_code == 2 and "already exists" in again.stderr


@pytest.mark.cli
def test_channels_command_exact_data_check(checkpoint):
    result = CliRunner().invoke(main, ["--quiet", "channels", str(checkpoint), "--n-items", "3", "--n-prompts", "6",
                                       "--top", "2", "--z-threshold", "1", "--data-check", "exact", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    checks = [c for p in record["pairs"] for c in p["checks"]]
    assert record["settings"]["check_method"] == "exact"
    assert checks and all(c["measured"] == ["0.0", "2.0"] and "estimated_attention_shift" not in c for c in checks)


@pytest.mark.cli
def test_channels_command_one_line_errors(checkpoint):
    for args, message in ((["--pair", "20.0-23.0"], "sender:receiver"), (["--pair", "3.0:1.0"], "below the receiver"),
                          (["--pair", "1.0:99.0"], "does not exist"), (["--offsets", "9-2"], "--offsets '9-2'")):
        one_line_error(run_cli("channels", checkpoint, "--no-data-check", *args, quiet=False), message)


@pytest.mark.parametrize("option", ["--z-threshold", "--min-share", "--check-alpha", "--draft-scale"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.cli
def test_channels_refuses_non_finite_numbers(checkpoint, tmp_path, option, value):
    """A nan threshold compared false with every score and silently found no channel."""
    result = CliRunner().invoke(main, ["channels", str(checkpoint), "--no-data-check", option, value,
                                       "--out", str(tmp_path / "ch")])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"Invalid value for '{option}'" in lines[0], result.stderr
    assert "is not a finite number" in lines[0] or "x>=0" in lines[0]  # -inf is below a bound of 0 anyway
    assert not (tmp_path / "ch").exists()


# ---- outputs: plots, table, draft hint -----------------------------------------------------------


@pytest.fixture(scope="module")
def unchecked(session):
    """A report without a data check, with a low bar so that pairs have channel components."""
    return find_channels(session, settings=ChannelSettings(n_items=(3,), n_prompts=6, n_sequences=6, top=3,
                                                           z_threshold=0.0, min_share=0.0, data_check=False))


def _figure_of(plot, report, tmp_path, monkeypatch):
    """Run a PLOTS function and keep its figure (it closes it after saving)."""
    from th_edit.channels import plots

    kept = []
    monkeypatch.setattr(plots.plt, "close", lambda figure=None: kept.append(figure))
    plot(report, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 1000
    return kept[-1]


def _texts(figure) -> str:
    return "\n".join(t.get_text() for axes in figure.axes for t in [*axes.texts, axes.title])


def test_weight_vs_data_without_a_data_check_says_so(unchecked, tmp_path, monkeypatch):
    from th_edit.channels.plots import plot_weight_vs_data

    figure = _figure_of(plot_weight_vs_data, unchecked, tmp_path, monkeypatch)
    assert "--no-data-check" in _texts(figure) and "No data scores to plot" in _texts(figure)
    assert not any(axes.collections for axes in figure.axes)  # no empty scatter axes


def test_components_map_marks_channel_components_beyond_the_first_columns(unchecked, tmp_path, monkeypatch):
    """Every ● of the shown pairs is drawn, also for components past the first HEATMAP_COMPONENTS
    (here 2, so that the tiny model's d_head has components beyond them)."""
    from th_edit.channels import plots

    monkeypatch.setattr(plots, "HEATMAP_COMPONENTS", 2)
    pairs = sorted((p for p in unchecked.pairs if p.channel), key=lambda p: -float(p.scores.z.max()))[:plots.HEATMAP_PAIRS]
    beyond = sorted({k for p in pairs for k in p.reported if k >= 2})
    assert beyond  # the premise
    figure = _figure_of(plots.plot_component_heatmap, unchecked, tmp_path, monkeypatch)
    axes = figure.axes[0]
    labels = [t.get_text() for t in axes.get_xticklabels()]
    assert labels == [str(k) for k in [0, 1, *beyond]]
    marks = [t for t in axes.texts if t.get_text() == "●"]
    assert len(marks) == sum(len(p.reported) for p in pairs)
    for p_row, pair in enumerate(pairs):
        drawn = sorted(int(labels[round(t.get_position()[0])]) for t in marks if round(t.get_position()[1]) == p_row)
        assert drawn == sorted(pair.reported)


def test_mover_map_shows_which_movers_each_inhibition_head_feeds(unchecked, tmp_path, monkeypatch):
    """Rows: the top inhibition heads; columns: the top movers; cells: the full Q-composition from
    the row's head into the column's mover (the inhibition channel, README "channels")."""
    from th_edit.channels.plots import MAP_HEADS, mover_map, plot_mover_map

    senders, movers, values, channel = mover_map(unchecked)
    count = max(MAP_HEADS, unchecked.settings.top)
    assert [(h.layer, h.head) for h in senders] == [(h.layer, h.head) for h in unchecked.roles["inhibition"].top(count)]
    assert [(h.layer, h.head) for h in movers] == [(h.layer, h.head) for h in unchecked.roles["mover"].top(count)]
    full = unchecked.scores.full_scores("q")
    for i, sender in enumerate(senders):
        for j, mover in enumerate(movers):
            if sender.layer < mover.layer:
                assert float(values[i, j]) == pytest.approx(float(full[sender.layer, sender.head, mover.layer, mover.head]))
            else:
                assert math.isnan(float(values[i, j]))
    assert channel == {(p.sender, p.receiver): len(p.reported) for p in unchecked.pairs
                       if p.channel == "inhibition" and p.reported}
    figure = _figure_of(plot_mover_map, unchecked, tmp_path, monkeypatch)
    axes = figure.axes[0]
    assert "Which movers each inhibition head feeds" in axes.get_title()
    assert [t.get_text() for t in axes.get_yticklabels()] == [str(s) for s in senders]
    assert [t.get_text() for t in axes.get_xticklabels()] == [str(m) for m in movers]


def test_channel_tables_line_up_for_one_and_two_digit_layers():
    """Heads 9.3 and 20.0 in one table: the fields of every row start in the same columns."""
    from types import SimpleNamespace

    from th_edit.channels.render import render_channels
    from th_edit.channels.roles import HeadScore

    def heads(*names):
        return SimpleNamespace(top=lambda k: [HeadScore(int(n.split(".")[0]), int(n.split(".")[1]), 0.25, 0.2, 0.3, 8)
                                              for n in names[:k]])

    def entry(sender, component, receiver, circuit, receiver_component):
        (sl, sh), (rl, rh) = (map(int, sender.split(".")), map(int, receiver.split(".")))
        return {"sender": {"layer": sl, "head": sh, "component": component, "share": 0.5},
                "receiver": {"layer": rl, "head": rh, "circuit": circuit, "component": receiver_component, "cosine": 0.5},
                "mode": "q", "weight_score": 0.1, "z": 4.0, "data": None}

    entries = [entry("9.3", 0, "22.7", "qk", 0), entry("20.0", 12, "23.1", "qk", 5), entry("9.3", 5, "9.4", "qk", 17)]
    report = SimpleNamespace(
        model="m", settings=ChannelSettings(), scores=SimpleNamespace(baseline=0.05),
        roles={"inhibition": heads("9.3", "20.0", "17.5"), "mover": heads("23.1", "9.7"),
               "negative_mover": heads("10.2", "8.1", "22.11")},
        pairs=[SimpleNamespace(channel="inhibition")], channel=lambda kind: entries if kind == "inhibition" else [],
        agreement=lambda: {"pairs_checked": 0})
    lines = render_channels(report).splitlines()
    rows = [line for line in lines if " OV " in line]
    assert len(rows) == 3
    for token in (" OV ", " QK "):
        assert len({row.index(token) for row in rows}) == 1, rows
    roles = [line for line in lines if line.split() and line.split()[0] in ("inhibition", "mover", "negative_mover")
             and "channel" not in line]
    assert len(roles) == 3
    assert len({row.index("(") for row in roles}) == 1, roles
    starts = [[m.start() for m in re.finditer(r"\(", row)] for row in roles]
    assert all(s[:2] == starts[0][:2] for s in starts), roles


@pytest.mark.cli
def test_draft_recipe_hint_names_the_model_and_the_path_as_written(checkpoint, tmp_path, monkeypatch):
    """The hint in the draft's header is a command that works as written, from where channels ran."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["--quiet", "channels", str(checkpoint), "--n-items", "3", "--n-prompts", "6",
                                       "--top", "2", "--z-threshold", "0", "--min-share", "0", "--no-data-check",
                                       "--out", "ch"])
    assert result.exit_code == 0, result.output
    header = Path("ch/draft-recipe.yaml").read_text()
    hint = f"th-edit bench {checkpoint} --compare ch/draft-recipe.yaml"
    assert f"`{hint}`" in header and "MODEL" not in header
    assert f"`th-edit search {checkpoint} --channels ch/channels.json`" in header
    bench = CliRunner().invoke(main, ["--quiet", *hint.split()[1:], "--n-items", "3", "--n-prompts", "2", "--no-kl"])
    assert bench.exit_code == 0, bench.output


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / 22.5 ** 0.5)  # ties share their average rank
    assert spearman([1, 1, 1], [1, 2, 3]) is None and spearman([1, 2], [2, 1]) is None
