"""Every long phase reports progress (a bar with a total, so an ETA): the search's caching,
attribution, each trial, the held-out evaluation; `bench.paired`; the first load of a GGUF model.
--quiet (and `ui.silenced()` / `paired(progress=False)` in the API) silences them."""

from __future__ import annotations

import pytest
from tiny import tiny_checkpoint
from tqdm.auto import tqdm

import th_edit
from th_edit import ui
from th_edit.recipe import Edit
from th_edit.search.optimize import Limits
from th_edit.search.pipeline import SearchSettings, search
from th_edit.search.space import Candidate

SETTINGS = SearchSettings(n_items=(2, 3), trials=3, seed=1, limits=Limits(kl_budget=0.5, max_ioi_drop=0.5),
                          tune_prompts=6, held_out_prompts=6, quick_prompts=2, tune_kl_texts=20, batch_size=4,
                          whole_head_scales=(1.5,))


class Bars:
    """Every bar th_edit.ui draws, as (desc, total, shown) and the bar itself (its final count)."""

    def __init__(self):
        self.made: list[tuple[dict, tqdm]] = []

    def descs(self, shown: bool = True) -> list[str]:
        return [k.get("desc") or "" for k, _ in self.made if (not k.get("disable")) == shown]

    def named(self, prefix: str) -> list[tqdm]:
        return [bar for k, bar in self.made if (k.get("desc") or "").startswith(prefix)]


@pytest.fixture
def bars(monkeypatch):
    recorded = Bars()

    class Recording(tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            recorded.made.append((kwargs, self))

    monkeypatch.setattr(ui, "tqdm", Recording)
    return recorded


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    return th_edit.load(str(tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "m", "llama", seed=2)))


def _complete(bar: tqdm) -> bool:
    return bar.total is not None and bar.total > 0 and bar.n == bar.total


@pytest.mark.pipeline
def test_every_search_phase_shows_a_bar_that_runs_to_its_total(session, bars):
    candidates = [Candidate(1, 0, "ov", (0, 1)), Candidate(2, 1, "ov", (0, 2))]
    report = search(session, candidates, SETTINGS, draft=[Edit(layer=1, head=0, circuit="ov", components=[0], scale=2.0)])
    shown = bars.descs()
    assert "component attribution" in shown  # ranking the components (attribution)
    caching = bars.named("caching the unedited model below layer")
    # tuning prompts, then held-out prompts, then each form the search never saw that this tokenizer can score
    assert report.transfer and len(caching) == 2 + len(report.transfer) and all(_complete(b) for b in caching)
    transfer = bars.named("forms never seen: ")
    assert len(transfer) == len(report.transfer) and all(_complete(b) for b in transfer)
    chat = bars.named("greedy chat replies (unedited)") + bars.named("held-out chat replies: ")
    assert len(chat) == 1 + len(report.held_out) and all(_complete(b) for b in chat)
    trials = bars.named("trial ")
    assert trials and all(_complete(b) for b in trials)
    assert {f"trial {t.number}: quick look" for t in report.result.trials if t.edits} <= set(shown)
    assert [b.n for b in bars.named("search")] == [SETTINGS.trials]
    held_out = bars.named("held-out prompts: ") + bars.named("held-out KL: ")
    assert len(held_out) == 2 * len(report.held_out) and all(_complete(b) for b in held_out)
    assert _complete(bars.named("held-out evaluation")[0])


@pytest.mark.pipeline
def test_bench_paired_shows_its_passes_unless_silenced(session, bars):
    edits = [Edit(layer=1, head=0, circuit="ov", components=[0], scale=2.0)]
    args = dict(tasks=("laundry",), n_items=[2], n_prompts=4, kl_texts=3, keep_base_logits=False)
    shown = th_edit.bench.paired(session, edits, **args)
    assert {"scoring before", "scoring after", "neutral-text KL"} <= set(bars.descs())
    bars.made.clear()
    silent = th_edit.bench.paired(session, edits, progress=False, **args)
    assert bars.made and not bars.descs(shown=True)  # bars made, every one disabled
    assert not ui.is_quiet()  # only inside the call
    with ui.silenced():
        th_edit.bench.paired(session, edits, **args)
    assert not bars.descs(shown=True)
    assert silent["paired"] == shown["paired"]


@pytest.mark.cli
def test_the_first_gguf_load_reports_the_phases_after_transformers_bar(tmp_path, monkeypatch, bars, capsys):
    from tiny_gguf import write_tiny_gguf

    from th_edit import models

    monkeypatch.setenv("TH_EDIT_CACHE", str(tmp_path / "cache"))
    path = write_tiny_gguf(tmp_path / "tiny-gemma3.gguf", "gemma3")
    models.resolve(str(path))
    written = bars.named("writing the float32 cache")
    assert len(written) == 1 and _complete(written[0])
    assert f"reading the tokenizer of {path.name}" in capsys.readouterr().err
