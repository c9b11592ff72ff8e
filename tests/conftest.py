import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# Test tiers (README, "Development"). Every test belongs to exactly one:
#   math      the math and the units, in-process, on tiny tensors or tiny random models: no command line,
#             no subprocess (both enforced below), no pretrained model. `pytest -m math`, under a minute.
#   pipeline  whole analyses on tiny random models through the Python API (sessions, benchmark, channels,
#             search, subspace): no command line either, but seconds each.
#   cli       the commands end to end (the CLI runner, subprocesses, files written and read back).
#   real      the offline pretrained models (smollm2-135m, gemma-3-270m).
# A test's own mark (or its module's `pytestmark`) decides; otherwise its module's tier below (a module not
# listed is cli). A math module marks its CLI tests `cli` and its slow end-to-end ones `pipeline`.
TIERS = ("math", "pipeline", "cli", "real")
MODULE_TIERS = {
    **dict.fromkeys(("test_arch_exactness", "test_bench", "test_channels", "test_composition", "test_edit_math",
                     "test_method_doc", "test_roles", "test_rotated", "test_search", "test_search_gradient",
                     "test_session", "test_stats", "test_stats_math", "test_subspace", "test_tasks"), "math"),
    "test_attribution": "pipeline",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        tiers = [tier for tier in TIERS if item.get_closest_marker(tier)]
        if len(tiers) > 1:
            raise pytest.UsageError(f"{item.nodeid} is marked {' and '.join(tiers)}: a test belongs to one tier")
        if not tiers:
            item.add_marker(MODULE_TIERS.get(item.module.__name__, "cli"))


class TierError(AssertionError):
    pass


def _refuse(what: str):
    def refused(*args, **kwargs):
        raise TierError(f"a math-tier test {what}: mark it @pytest.mark.cli (tests/conftest.py explains the tiers)")
    return refused


@pytest.fixture(autouse=True)
def math_tier_stays_in_process(request, monkeypatch):
    """A math test that runs the command line or a subprocess is in the wrong tier: it fails, saying so.
    Math tests also run on one thread: their products are tiny, and on a shared 2-core machine OpenMP's
    spinning barriers made them several times slower (th_edit.linalg.single_threaded)."""
    if not request.node.get_closest_marker("math"):
        yield
        return
    from click.testing import CliRunner

    from th_edit.linalg import single_threaded

    monkeypatch.setattr(CliRunner, "invoke", _refuse("ran the command line"))
    monkeypatch.setattr(subprocess.Popen, "__init__", _refuse("started a subprocess"))
    with single_threaded():
        yield


@pytest.fixture(autouse=True)
def default_console():
    """Every test starts with th-edit's console at its defaults: a CLI run with --quiet in one test
    must not silence the messages another test reads."""
    from th_edit import ui

    ui.configure(quiet=False, verbose=False)
    yield
