"""The positional-index subspace: basis, intervention, traversal, crowding, outputs and command.

The planted model. A tiny Llama (4 heads of 12 dims, RoPE base 1e12 so the head dims used below
barely rotate) whose residual dims 0..11 are reserved: the embedding, every MLP and every other
head write nothing there. A forward hook on the embedding *plants per-token input features*:
dim 0 = 20 on every token; at each item's first mention, a flag (dim 5) and the item's code
c_k (dims 6..8, k = its first-list position); at the second mention of the last handled item
(the "carrier"), a flag (dim 1) and the code of that item's first-list position (dims 2..4).
Everything after that is *crafted weights*: sender head 1.0 attends from every token to the
carrier (QK: dim 0 · dim 1) and copies its code into residual dims 9..11 through a rank-3 OV with
singular values 3, 2, 1 (the planted directions); mover head 2.0 attends to the first mention
whose code best matches what it reads in dims 9..11 (QK: dims 9..11 · dims 6..8, plus a
first-mention bias). So the sender's output encodes the position of a repeated item along
fixed directions, and the mover's choice of item is a function of those directions only.
"""

import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from tiny import tiny_checkpoint, tiny_model, word_tokenizer

from th_edit import hooks, subspace
from th_edit.cli import main
from th_edit.errors import UserError
from th_edit.session import Session
from th_edit.subspace import crowding, plots, regions, spearman
from th_edit.subspace.traverse import SubspaceIntervention, select
from th_edit.tasks.laundry import FRAMES, generate_laundry

E, F, CODE, M, KEY, OUT = 0, 1, slice(2, 5), 5, slice(6, 9), slice(9, 12)
GAIN = 20.0
SENDER, MOVER = (1, 0), (2, 0)
COMPONENTS = [(1, 0, 0), (1, 0, 1), (1, 0, 2)]


def codes(n: int = 8) -> torch.Tensor:
    """Unit vectors on a spiral: distinct, spanning 3D."""
    k = torch.arange(n, dtype=torch.float64)
    theta, phi = 0.5 + 0.3 * k, 1.3 * k
    return torch.stack([theta.sin() * phi.cos(), theta.sin() * phi.sin(), theta.cos()], 1)


def planted_model(tokenizer):
    model = tiny_model("llama", vocab_size=len(tokenizer), num_attention_heads=4, num_key_value_heads=4, head_dim=12,
                       rope_parameters={"rope_type": "default", "rope_theta": 1e12})
    rotation = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64))[0]
    write = torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)) @ rotation  # z[0:3] -> dims 9..11
    with torch.no_grad():
        model.model.embed_tokens.weight[:, :12] = 0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[:12] = 0
            layer.mlp.down_proj.weight[:12] = 0
            layer.input_layernorm.weight[:12] = 1
        sender = model.model.layers[1].self_attn
        for proj in (sender.q_proj, sender.k_proj, sender.v_proj):
            proj.weight[:12] = 0
        sender.o_proj.weight[:, :12] = 0
        sender.q_proj.weight[5, E] = 2.0  # head dim 5 rotates at 1e-10 rad per token
        sender.k_proj.weight[5, F] = 2.0
        for j in range(3):
            sender.v_proj.weight[j, CODE.start + j] = 1.0
        sender.o_proj.weight[OUT, 0:3] = write.T.float()
        mover = model.model.layers[2].self_attn
        mover.q_proj.weight[:12] = 0
        mover.k_proj.weight[:12] = 0
        mover.q_proj.weight[3:6, OUT] = (10.0 * torch.linalg.inv(write)).T.float()
        mover.q_proj.weight[9, E] = 4.0
        for j in range(3):
            mover.k_proj.weight[3 + j, KEY.start + j] = 1.0
        mover.k_proj.weight[9, M] = 1.0
    return model, write


def plant_features(model, tokenizer):
    items = {tokenizer.convert_tokens_to_ids(w) for w in FRAMES[0].lexicon}
    code = codes().float()

    def hook(module, args, output):
        output = output.clone()
        output[..., E] = GAIN
        for b, row in enumerate(args[0].tolist()):
            index, second = {}, {}
            for t, token in enumerate(row):
                if token in items:
                    if token in index:
                        second[token] = t
                    else:
                        output[b, t, M] = GAIN
                        output[b, t, KEY] = GAIN * code[len(index)]
                        index[token] = len(index)
            if second:
                carrier = max(second, key=second.get)
                output[b, second[carrier], F] = GAIN
                output[b, second[carrier], CODE] = GAIN * code[index[carrier]]
        return output

    return model.model.embed_tokens.register_forward_hook(hook)


def last_handled_positions(result) -> list[int]:
    """Ground truth: the first-list position of the item mentioned last in the handled list."""
    return [items.handled_order[-1] for items in result.survey.items]


@pytest.fixture(scope="module")
def planted():
    tokenizer = word_tokenizer()
    model, write = planted_model(tokenizer)
    handle = plant_features(model, tokenizer)
    session = Session(model, tokenizer, reference="planted")
    prompts = generate_laundry(tokenizer, [2, 3, 4, 5], 16, seed=0, frames=["laundry"])
    result = subspace.analyze(session, COMPONENTS, [MOVER], prompts=prompts, grid=4, traverse_n=4, traverse_prompts=6)
    yield session, write, result
    handle.remove()


PLANTED_DIRECTIONS = torch.eye(48, dtype=torch.float64)[:, OUT]


# ----------------------------------------------------------------------------------------------
# Basis


def test_planted_directions_are_recovered_by_both_bases(planted):
    _, _, result = planted
    for kind in ("weights", "data"):
        basis = result.bases[kind]
        angles = subspace.principal_angles(basis.vectors, PLANTED_DIRECTIONS)
        assert angles.max() < 5.0, (kind, angles)
        assert torch.allclose(basis.vectors.T @ basis.vectors, torch.eye(3, dtype=torch.float64), atol=1e-10)
    assert result.angles.max() < 5.0
    # The weight basis comes from the sender's components in the order given.
    assert result.bases["weights"].components == COMPONENTS


def test_a_basis_outside_the_plant_is_far_from_it(planted):
    """The angle test can fail: components of another head do not span the planted directions."""
    session, _, result = planted
    other = subspace.weight_basis(session, [(1, 1, 0), (1, 1, 1), (1, 1, 2)], 3, torch.randn(10, 48, dtype=torch.float64))
    assert subspace.principal_angles(other.vectors, PLANTED_DIRECTIONS).max() > 45.0


def test_explained_variance_adds_up(planted):
    session, _, result = planted
    signal = result.survey.head_outputs(session, [SENDER]).sum(1)
    full = torch.linalg.qr(torch.randn(48, 48, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))[0]
    assert subspace.variance_shares(signal, full).sum() == pytest.approx(1.0, abs=1e-9)
    data = result.bases["data"]
    assert torch.allclose(data.explained, subspace.variance_shares(signal, data.vectors), atol=1e-9)
    assert (data.explained[:-1] >= data.explained[1:] - 1e-12).all()  # PCA order
    # The planted signal lies entirely in the planted directions: three directions explain all of it.
    for kind in ("weights", "data"):
        assert result.bases[kind].explained.sum() == pytest.approx(1.0, abs=1e-6)


def test_weight_basis_skips_dependent_directions_and_says_when_too_few(planted):
    session, _, _ = planted
    signal = torch.randn(10, 48, dtype=torch.float64)
    basis = subspace.weight_basis(session, [(1, 0, 0), (1, 0, 0), (1, 0, 1)], 2, signal)
    assert basis.components == [(1, 0, 0), (1, 0, 1)]
    with pytest.raises(UserError, match="needs 3 independent sender components, but only 2"):
        subspace.weight_basis(session, [(1, 0, 0), (1, 0, 1)], 3, signal)


def test_inhibited_position_is_the_planted_item(planted):
    _, _, result = planted
    assert result.inhibited.tolist() == last_handled_positions(result)


# ----------------------------------------------------------------------------------------------
# Traversal


@pytest.mark.pipeline
def test_traversal_to_a_planted_code_selects_its_item(planted):
    session, write, result = planted
    basis = result.used.vectors
    prompts = [p for p in result.survey.prompts if p.n_items == 4][:6]
    # The signal the sender writes for item k (any positive scale), in basis coordinates.
    points = torch.stack([(4.0 * codes()[k] @ write) @ basis[OUT] for k in range(4)])
    chosen = select(session, prompts, [SENDER], [MOVER], basis, points)
    for k in range(4):
        assert chosen.attended[k].tolist() == [k] * len(prompts)
    # Without the plant's geometry (points moved to another item's code) the choice moves with it.
    assert select(session, prompts, [SENDER], [MOVER], basis, points[[1, 0]]).attended[:, 0].tolist() == [1, 0]


def test_traversal_map_has_a_region_for_every_item(planted):
    _, _, result = planted
    traversal = result.traversal
    assert len(traversal["grid"]) == 4 ** 3
    assert set(traversal["regions"]["attended"]) == {"0", "1", "2", "3"}
    for centroid in traversal["at_centroids"]:
        assert centroid["attended"][centroid["inhibited_position"]] == 1.0


@pytest.mark.pipeline
@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_cached_traversal_equals_full_forward_passes(family):
    """The last-token passes on the key/value cache (many points per pass, prompts of different
    lengths, Gemma's sliding window of 4) select what full forward passes with the hooks select."""
    tokenizer = word_tokenizer()
    session = Session(tiny_model(family, vocab_size=len(tokenizer)), tokenizer)
    prompts = generate_laundry(tokenizer, [4], 4, seed=3)
    senders, movers = [(0, 1), (1, 0)], [(2, 0), (2, 3)]
    basis = torch.linalg.qr(torch.randn(48, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)))[0]
    points = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) * 5
    points[2, 1] = float("nan")
    for mode in ("replace", "add"):
        chosen = select(session, prompts, senders, movers, basis, points, mode=mode, batch_size=3)
        intervention = SubspaceIntervention(session, senders, basis, mode)
        for j, prompt in enumerate(prompts):
            ids = tokenizer(prompt.prompt, return_tensors="pt")["input_ids"]
            candidates = [tokenizer.convert_tokens_to_ids(c.strip()) for c in prompt.candidates]
            items = subspace.locate_items(ids[0].tolist(), candidates, prompt.answer_position)
            for g, point in enumerate(points):
                intervention.points = point[None]
                with torch.no_grad(), intervention.installed(), \
                        hooks.recording(session.model, session.adapter, [2], attention=True, positions=-1) as rec:
                    logits = session.model(ids).logits[0, -1]
                pattern = rec.attention[2][0][0, :, 0]  # [H, T]
                scores = [sum(float(pattern[h, t]) for _, h in movers for t in items.mentions(i)) for i in range(4)]
                assert chosen.attended[g, j] == int(np.argmax(scores)), (mode, g, j)
                assert chosen.predicted[g, j] == int(logits[candidates].argmax()), (mode, g, j)


@pytest.mark.parametrize("mode", ["replace", "add"])
def test_intervention_sets_the_signal_coordinates(mode):
    """After the last sender layer, at the last token, the residual stream moves by exactly
    B(p − Bᵀs) (replace) or Bp (add); a NaN coordinate and every earlier token stay as they were."""
    tokenizer = word_tokenizer()
    session = Session(tiny_model("gemma3_text", vocab_size=len(tokenizer)), tokenizer)
    senders = [(0, 2), (1, 1)]
    basis = torch.linalg.qr(torch.randn(48, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(6)))[0]
    prompt = generate_laundry(tokenizer, [3], 1, seed=1)[0]
    ids = tokenizer(prompt.prompt, return_tensors="pt")["input_ids"]
    point = torch.tensor([[2.0, float("nan"), -3.0]], dtype=torch.float64)
    intervention = SubspaceIntervention(session, senders, basis, mode)
    runs = []
    for points in (None, point):
        intervention.points = points
        with torch.no_grad(), intervention.installed(), \
                hooks.recording(session.model, session.adapter, [1], residual=True) as rec:
            session.model(ids)
        runs.append((rec.residual[1][0][0].double(), intervention.signal[0]))
    (before, signal), (after, _) = runs
    # The hooks' signal is the sum of the sender heads' outputs as the survey records them.
    recorded = subspace.survey(session, [prompt], [0, 1])
    assert torch.allclose(signal, recorded.head_outputs(session, senders).sum(1)[0], atol=1e-5)
    moved = (after[-1] - before[-1]) @ basis
    expected = point[0] - signal @ basis if mode == "replace" else point[0]
    assert moved[[0, 2]] == pytest.approx(expected[[0, 2]].tolist(), abs=1e-4)
    assert abs(float(moved[1])) < 1e-4
    assert torch.equal(after[:-1], before[:-1])
    assert ((after[-1] - before[-1]) - ((after[-1] - before[-1]) @ basis) @ basis.T).abs().max() < 1e-4


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_head_outputs_add_up_to_what_the_attention_block_writes(family):
    """z_h W_O^eff[h] · scale summed over heads is what the block adds to the residual stream
    (Gemma: after its post-attention norm, whose per-token scale comes from the adapter)."""
    tokenizer = word_tokenizer()
    model = tiny_model(family, vocab_size=len(tokenizer))
    session = Session(model, tokenizer)
    prompts = generate_laundry(tokenizer, [3], 3, seed=2)
    layer = 1
    block = model.model.layers[layer]
    written = block.post_attention_layernorm if family == "gemma3_text" else block.self_attn.o_proj
    seen = []
    handle = written.register_forward_hook(lambda m, a, out: seen.append(out[:, -1].double()))
    try:
        recorded = subspace.survey(session, prompts, [layer], batch_size=8)
    finally:
        handle.remove()
    total = recorded.head_outputs(session, [(layer, h) for h in range(session.adapter.n_heads)]).sum(1)
    # survey batches by length: match rows through the recorded order (one batch of three here)
    order = sorted(range(len(prompts)), key=lambda i: len(tokenizer(prompts[i].prompt)["input_ids"]))
    assert torch.allclose(total[order], seen[0], atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Crowding and regions


def test_crowding_finds_that_crowded_positions_fail():
    """Synthetic: within each N the middle positions sit closer together and fail more."""
    rng = np.random.default_rng(0)
    coordinates, n_items, positions, correct = [], [], [], []
    for n in (3, 4, 5, 6):
        centres = np.array([[p ** 0.5 * 3.0 if p else 0.0, 0.0, 0.0] for p in range(n)])
        centres[:, 0] = np.cumsum([0] + [3.0 if p in (0, n - 2) else 0.6 for p in range(n - 1)])
        for p in range(n):
            accuracy = 0.95 if p in (0, n - 1) else 0.2
            for _ in range(40):
                coordinates.append(centres[p] + rng.normal(0, 0.3, 3))
                n_items.append(n)
                positions.append(p)
                correct.append(rng.random() < accuracy)
    found = crowding(np.array(coordinates), np.array(n_items), np.array(positions), np.array(correct), n_permutations=2000)
    assert found["pooled_spearman"] > 0.5 and found["pooled_ci95"][0] > 0
    assert found["within_n_spearman"] > 0.5 and found["within_n_p"] < 0.01
    # Shuffle correctness across prompts: the relation goes away.
    shuffled = rng.permutation(np.array(correct))
    null = crowding(np.array(coordinates), np.array(n_items), np.array(positions), shuffled, n_permutations=2000)
    assert null["within_n_p"] > 0.01


def test_spearman_and_regions():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 41]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))  # Pearson of average ranks
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    labels = torch.tensor([[0, 0, 1], [2, 0, 1], [0, 2, 2]])
    assert regions(labels) == {0: 2, 1: 1, 2: 2}


# ----------------------------------------------------------------------------------------------
# Outputs


@pytest.mark.pipeline
def test_outputs_are_complete_self_contained_and_never_overwritten(planted, tmp_path):
    _, _, result = planted
    record = result.to_dict()
    out = tmp_path / "out"
    written = subspace.write_outputs(record, out)
    assert sorted(p.name for p in written) == sorted(subspace.OUTPUT_FILES)
    assert sorted(p.name for p in out.iterdir()) == sorted(subspace.OUTPUT_FILES)  # no temporary leftovers
    for name in ("subspace.png", "traversal.png", "crowding.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (out / "subspace.html").read_text()
    assert not re.search(r"<script[^>]*src=[\"']?https?:", html)
    assert "Plotly.newPlot" in html and len(html) > 1_000_000  # plotly.js itself is inside
    saved = json.loads((out / "subspace.json").read_text())
    vectors = torch.tensor(saved["bases"]["weights"]["vectors"], dtype=torch.float64)
    assert torch.allclose(vectors @ vectors.T, torch.eye(3, dtype=torch.float64), atol=1e-9)
    assert len(saved["points"]) == len(result.survey.prompts)
    assert {c["position"] for c in saved["centroids"]["by_inhibited_position"] if c["n_items"] == 5} <= set(range(5))

    before = (out / "subspace.json").read_bytes()
    with pytest.raises(UserError, match="already holds"):
        subspace.write_outputs({**record, "model": "other"}, out)
    assert (out / "subspace.json").read_bytes() == before
    subspace.write_outputs({**record, "model": "other"}, out, force=True)
    assert json.loads((out / "subspace.json").read_text())["model"] == "other"
    assert sorted(p.name for p in out.iterdir()) == sorted(subspace.OUTPUT_FILES)


def _strict(text: str):
    return json.loads(text, parse_constant=lambda name: pytest.fail(f"bare {name} in JSON"))


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--proxy-server=127.0.0.1:9",  # every network request fails: the page must not need one
                  "--virtual-time-budget=15000"]  # run the page's scripts to completion before dumping


def _chromium() -> str:
    """Debian's chromium; in CI (the CI variable set) its absence is a failure, locally a skip."""
    path = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: .ci/run installs it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium); CI requires it")
    return path


def _browse(page: Path, tmp_path: Path, width: int, action: list[str]) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    return subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},1200",
                           *action, page.as_uri()], capture_output=True, text=True, timeout=240)


@pytest.mark.cli
def test_html_renders_offline_in_a_real_browser_and_fits_a_small_screen(planted, tmp_path):
    """subspace.html in headless chromium with every network request failing: plotly draws its
    SVG and WebGL layers, the plot takes the window's width (not a fixed 1600 px), the legend
    (below the panels) starts inside the window and names both traversal views, and a screenshot
    is a picture, not a blank page."""
    import matplotlib.image

    _chromium()
    record = planted[2].to_dict()
    page = tmp_path / "subspace.html"
    plots.write_html(record, page)
    width = 800
    dom = _browse(page, tmp_path, width, ["--dump-dom"])
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    svg = re.search(r'<svg class="main-svg"[^>]*\bwidth="(\d+)"', html)
    assert svg, "plotly drew nothing"
    assert 300 < int(svg.group(1)) <= width
    assert "<canvas" in html and 'class="gl-container"' in html  # the 3D scenes (WebGL)
    legend = re.search(r'<g class="legend"[^>]*transform="translate\(([\d.]+),([\d.]+)\)"', html)
    assert legend and float(legend.group(1)) < width
    for text in ("movers attend: item", "model predicts: item", "inhibited 0", "answer 0"):
        assert text in html, text
    shot = tmp_path / "shot.png"
    result = _browse(page, tmp_path, width, [f"--screenshot={shot}"])
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    pixels = matplotlib.image.imread(shot)[..., :3].reshape(-1, 3)
    colours = np.unique((pixels * 255).astype(np.uint8), axis=0)
    assert pixels.std() > 0.05 and len(colours) > 100  # drawn points, axes and text, not a blank page


def test_html_axes_are_named_after_the_basis_directions(planted):
    record = planted[2].to_dict()
    figure = plots.html_figure(record)
    labels = plots._axis_labels(record)
    scenes = [figure.layout[name] for name in ("scene", "scene2", "scene3", "scene4")]
    for scene in scenes:
        assert [scene.xaxis.title.text, scene.yaxis.title.text, scene.zaxis.title.text] == labels[:3]
    assert labels[0].startswith(f"{record['basis_used']} 1 (")
    assert [a.text for a in figure.layout.annotations] == list(plots.HTML_PANELS)
    assert figure.layout.width is None and figure.layout.autosize  # the width follows the window
    predicted = [t for t in figure.data if t.legendgroup == "traversal predicted"]
    grid = record["traversal"]["grid"]
    assert sum(len(t.x) for t in predicted) == len(grid)
    assert {t.name for t in predicted} == {f"model predicts: item {g['predicted_mode']}" for g in grid}


@pytest.mark.pipeline
def test_outputs_are_strict_json_with_null_for_a_non_finite_number(planted, tmp_path):
    """A statistic that cannot be computed (a NaN separation, say) is null in subspace.json."""
    _, _, result = planted
    record = result.to_dict()
    record["crowding"] = {**record["crowding"], "within_n_p": math.nan}
    subspace.write_outputs(record, tmp_path / "out")
    assert _strict((tmp_path / "out" / "subspace.json").read_text())["crowding"]["within_n_p"] is None


@pytest.mark.pipeline
def test_a_full_disk_leaves_no_output_nor_the_directory_made_for_them(planted, tmp_path, monkeypatch):
    _, _, result = planted

    real = plots.save_figure

    def full_at_traversal(figure, path, **kwargs):
        if Path(path).name.startswith(".traversal.png"):
            Path(path).write_bytes(b"\x89PNG half")
            raise OSError(28, "No space left on device")
        return real(figure, path, **kwargs)

    monkeypatch.setattr(plots, "save_figure", full_at_traversal)
    out = tmp_path / "new" / "out"
    with pytest.raises(UserError) as excinfo:
        subspace.write_outputs(result.to_dict(), out)
    assert str(excinfo.value) == f"writing {out / 'traversal.png'} failed: no space left on device (nothing was written)"
    assert list(tmp_path.iterdir()) == []


def test_crowding_plot_has_whole_list_lengths_on_its_n_axis(planted):
    """N counts items: the per-N panel ticks exactly the N that were run, no 2.5 or 3.5."""
    record = planted[2].to_dict()
    figure = plots.crowding_figure(record)
    ticks = figure.axes[1].get_xticks().tolist()
    plots.plt.close(figure)
    assert ticks == [row["n_items"] for row in record["crowding"]["by_n"]] == [2, 3, 4, 5]


def test_summary_states_the_numbers(planted):
    _, _, result = planted
    text = subspace.summary(result.to_dict())
    assert "principal angles, weights vs data" in text
    assert "movers attend: 4 items" in text
    assert "crowding" in text


def test_summary_orders_state_their_sign_for_answer_and_inhibited_positions(planted):
    """"order along direction 1" names which positions and which way: the answer positions'
    ρ is crowding's, the inhibited positions' is read off their centroids, each +1 when position 0
    is lowest along the first direction (SmolLM2's README run: +1 and −1)."""
    record = planted[2].to_dict()
    text = subspace.summary(record)
    assert "+1: position 0 lowest, the last highest; -1: the reverse" in text
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["N", "accuracy"])
    assert lines[header].split()[-4:] == ["answer", "order", "inhibited", "order"]
    centroids = record["centroids"]["by_inhibited_position"]
    for row, line in zip(record["crowding"]["by_n"], lines[header + 1:]):
        cells = line.split()
        n = row["n_items"]
        mine = [c for c in centroids if c["n_items"] == n]
        expected = spearman([c["position"] for c in mine], [c["coordinates"][0] for c in mine], minimum=2)
        assert int(cells[0]) == n and float(cells[-2]) == pytest.approx(row["order_along_first_direction"], abs=0.005)
        assert float(cells[-1]) == pytest.approx(expected, abs=0.005) or (math.isnan(expected) and cells[-1] == "nan")
    flipped = {**record, "centroids": {**record["centroids"], "by_inhibited_position": [
        {**c, "coordinates": [-c["coordinates"][0], *c["coordinates"][1:]]} for c in centroids]}}
    last = subspace.summary(flipped).splitlines()[header + 1].split()[-1]
    first = lines[header + 1].split()[-1]
    assert first == "nan" or float(last) == pytest.approx(-float(first), abs=0.005)  # the sign follows the direction


# ----------------------------------------------------------------------------------------------
# Channel specification and fallback


def test_component_and_head_lists():
    assert subspace.parse_components("20.0:1, 20.5:0,20.0:1") == [(20, 0, 1), (20, 5, 0)]
    assert subspace.parse_heads("23.3,25.1") == [(23, 3), (25, 1)]
    for bad in ("20.0", "20:1", "a.b:c", ""):
        with pytest.raises(UserError, match="--components"):
            subspace.parse_components(bad)
    with pytest.raises(UserError, match="--movers: '23' is not LAYER.HEAD"):
        subspace.parse_heads("23")


def test_channels_file(tmp_path):
    good = {"channels": {"inhibition": [
        {"sender": {"layer": 1, "head": 0, "component": 1}, "receiver": {"layer": 2, "head": 3}, "mode": "q"},
        {"sender": {"layer": 1, "head": 0, "component": 1}, "receiver": {"layer": 2, "head": 1}, "mode": "q"},
        {"sender": {"layer": 0, "head": 2, "component": 0}, "receiver": {"layer": 2, "head": 3}, "mode": "q"}]},
        "roles": {"mover": [{"layer": 2, "head": 3, "mean": 0.4}, {"layer": 2, "head": 1, "mean": 0.2}]}}
    path = tmp_path / "channels.json"
    path.write_text(json.dumps(good))
    assert subspace.read_channels(path) == ([(1, 0, 1), (0, 2, 0)], [(2, 3), (2, 1)])
    for broken, message in [({"roles": good["roles"]}, "'channels.inhibition' must be a non-empty list"),
                            ({"channels": good["channels"]}, "'roles.mover' must be a non-empty list"),
                            ({**good, "channels": {"inhibition": [{"sender": {"layer": 1, "head": -1, "component": 0}}]}},
                             r"inhibition\[0\].sender: 'head' must be a non-negative integer")]:
        path.write_text(json.dumps(broken))
        with pytest.raises(UserError, match=message):
            subspace.read_channels(path)
    path.write_text("{not json")
    with pytest.raises(UserError, match="invalid JSON"):
        subspace.read_channels(path)


def test_fallback_finds_the_planted_sender(planted):
    session, _, _ = planted
    prompts = generate_laundry(session.tokenizer, [3, 4], 6, seed=1, frames=["laundry"])
    recorded = subspace.survey(session, prompts, range(3))
    chosen = subspace.choose_fallback(session, recorded, 3)
    assert chosen.sender_heads[0] == SENDER
    assert all(layer > max(s[0] for s in chosen.sender_heads) for layer, _ in chosen.movers)
    # Round-robin over the sender heads, best inhibition head first.
    assert [c[:2] for c in chosen.components] == [chosen.sender_heads[i % len(chosen.sender_heads)] for i in range(3)]


def test_q_composition_matches_the_dense_product():
    from th_edit.subspace.select import q_composition

    tokenizer = word_tokenizer()
    session = Session(tiny_model("gemma3_text", vocab_size=len(tokenizer)), tokenizer)
    weights = session.weights(2)
    dense = weights.W_Q[3] @ weights.W_K[3].T  # QK of receiver 2.3, d×d
    v = session.svd(0, 1, "ov").V[:, 2]
    expected = float((v @ dense).norm() / torch.linalg.matrix_norm(dense))
    assert q_composition(session, (0, 1, 2), (2, 3)) == pytest.approx(expected, rel=1e-10)


# ----------------------------------------------------------------------------------------------
# The command


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "model", "llama")


@pytest.mark.cli
def test_subspace_command(checkpoint, tmp_path):
    out = tmp_path / "out"
    args = ["--quiet", "subspace", str(checkpoint), "--n-items", "2-3", "--n-prompts", "4", "--grid", "2",
            "--traverse-prompts", "2", "--components", "1.0:0,1.1:0,1.2:1", "--movers", "2.3"]
    result = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "principal angles, weights vs data" in result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(subspace.OUTPUT_FILES)
    again = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert again.exit_code == 2 and again.output.count("\n") == 1 and "already holds" in again.output
    as_json = CliRunner().invoke(main, [*args, "--json", "--basis", "data"])
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.output)["basis_used"] == "data"


@pytest.mark.cli
def test_subspace_json_on_stdout_is_strict(checkpoint, monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setattr(subspace, "analyze", lambda *args, **kwargs: SimpleNamespace(
        to_dict=lambda: {"crowding": {"by_n": [{"n_items": 2, "mean_separation": math.nan}]}}))
    result = CliRunner().invoke(main, ["--quiet", "subspace", str(checkpoint), "--n-items", "2-3", "--n-prompts", "2",
                                       "--components", "1.0:0,1.1:0,1.2:1", "--movers", "2.3", "--json"])
    assert result.exit_code == 0, result.output
    assert _strict(result.output)["crowding"]["by_n"][0]["mean_separation"] is None


@pytest.mark.parametrize("extra, message", [
    (["--components", "1.0", "--movers", "2.3"], "--components: '1.0' is not LAYER.HEAD:COMPONENT"),
    (["--components", "1.0:0"], "--components and --movers go together"),
    (["--components", "1.0:0,1.1:0,1.2:0", "--movers", "1.3"], "do not come after the last sender layer"),
    (["--components", "1.0:0,1.1:0,9.2:0", "--movers", "2.3"], "sender head 9.2 does not exist"),
    (["--components", "1.0:0,1.1:0,1.2:99", "--movers", "2.3"], "component 1.2:99 does not exist"),
    (["--channels", "missing.json"], "missing.json: no such file"),
    (["--traverse-n", "5"], "--traverse-n 5 is not one of --n-items"),
])
@pytest.mark.cli
def test_subspace_command_user_errors(checkpoint, tmp_path, extra, message):
    result = CliRunner().invoke(main, ["--quiet", "subspace", str(checkpoint), "--n-items", "2-3", "--n-prompts", "2",
                                       "--out", str(tmp_path / "o"), *extra])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1
    assert message in result.output
    assert not (tmp_path / "o").exists()


@pytest.mark.pipeline
def test_readme_python_example_runs_on_a_tiny_model(tmp_path, monkeypatch):
    """The README's snippet as written (fewer prompts and grid points), on a tiny checkpoint with the same heads."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme[readme.index("### `th-edit subspace"):readme.index("## Python API")]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    base = tiny_checkpoint(tmp_path / "tiny", "llama", num_hidden_layers=24, num_attention_heads=9,
                           num_key_value_heads=3, head_dim=8, hidden_size=72)
    assert '"smollm2-135m"' in code and "n_prompts=40" in code
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    code = code.replace('"smollm2-135m"', repr(str(base))).replace("n_prompts=40", "n_prompts=3, grid=3")
    exec(compile(code, "README.md", "exec"), namespace)
    assert sorted(p.name for p in (tmp_path / "out" / "subspace-smollm2").iterdir()) == sorted(subspace.OUTPUT_FILES)
