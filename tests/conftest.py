import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def default_console():
    """Every test starts with th-edit's console at its defaults: a CLI run with --quiet in one test
    must not silence the messages another test reads."""
    from th_edit import ui

    ui.configure(quiet=False, verbose=False)
    yield
