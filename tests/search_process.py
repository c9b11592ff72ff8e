"""`th-edit` in a process of its own, for the scale-out tests: every search trial leaves a marker
file `<pid>-<trial>` in $TH_EDIT_TEST_MARKERS and then takes $TH_EDIT_TEST_TRIAL_SECONDS longer,
so that a test can kill a worker in the middle of a trial (its parameters already in the study);
with $TH_EDIT_TEST_AWAIT_OTHERS=n a trial waits until n other processes have begun one.

    python tests/search_process.py search MODEL ... --worker
"""

import os
import sys
import time
from pathlib import Path

from th_edit.search import optimize

_choices_of = optimize.choices_of


def slow_choices_of(trial, candidates):
    chosen = _choices_of(trial, candidates)
    markers = os.environ.get("TH_EDIT_TEST_MARKERS")
    if markers:
        (Path(markers) / f"{os.getpid()}-{trial.number}").touch()
        if len([m for m in os.listdir(markers) if m.startswith(f"{os.getpid()}-")]) == 1:  # this process's first trial
            _await_others(Path(markers), int(os.environ.get("TH_EDIT_TEST_AWAIT_OTHERS", "0")))
    time.sleep(float(os.environ.get("TH_EDIT_TEST_TRIAL_SECONDS", "0")))
    return chosen


def _await_others(markers: Path, others: int, timeout: float = 180) -> None:
    """Hold this trial until `others` other processes are inside a trial too (or `timeout` passed):
    the test then kills one of them knowing that every process has a trial of its own."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = {name.split("-")[0] for name in os.listdir(markers)} - {str(os.getpid())}
        if len(pids) >= others:
            return
        time.sleep(0.05)


optimize.choices_of = slow_choices_of

if __name__ == "__main__":
    from th_edit.cli import main

    sys.exit(main(sys.argv[1:], prog_name="th-edit"))
