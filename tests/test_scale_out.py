"""One search study shared by several processes (PostgreSQL and SQLite through Optuna's RDBStorage):
the global cap, heartbeats and retries of a killed worker, one held-out judgement, the settings
check, and database credentials that never leave the URL or the environment."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import postgres
import pytest
from click.testing import CliRunner
from tiny import tiny_checkpoint

from th_edit.cli import main
from th_edit.recipe import parse_recipe
from th_edit.search.shared import SURPLUS_ATTR
from th_edit.search.study import RECORD_ATTR

TESTS = Path(__file__).parent
CAP = 8
TRIAL_SECONDS = 0.6  # each trial's extra time in the worker processes: long enough to be killed in one
HEARTBEAT = 1  # seconds: a dead worker's trial is failed after 3


@pytest.fixture(scope="module")
def pg():
    """A real PostgreSQL server for this module. Skipped where none can start, except under CI
    (CI=true), where it must: .ci/run installs the package."""
    try:
        server = postgres.start()
    except RuntimeError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the PostgreSQL tests: {exc}")
        pytest.skip(str(exc))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    model = tiny_checkpoint(root / "m", "llama", seed=2)
    channels = root / "channels.json"
    channels.write_text(json.dumps({"channels": {"inhibition": []}, "pairs": [
        {"sender": "1.0", "receiver": "2.1", "channel": "inhibition", "z": [3.0, 1.0, 0.5]},
        {"sender": "1.2", "receiver": "2.1", "channel": "inhibition", "z": [0.1, 2.0]}]}))
    return model, channels


def search_args(model, channels, *extra) -> list[str]:
    return ["--quiet", "search", str(model), "--channels", str(channels), "--n-items", "2-3", "--tune-prompts", "4",
            "--held-out-prompts", "4", "--kl-budget", "1", "--max-ioi-drop", "100", "--heartbeat", str(HEARTBEAT),
            *extra]


def storage_url(backend: str, request, tmp_path, database: str) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'studies.db'}"
    server = request.getfixturevalue("pg")
    server.create_database(database)
    return server.url(database=database)


def trials_of(url: str, study: str):
    import optuna

    return optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False)


def spawn(args: list[str], markers: Path, await_others: int = 0) -> subprocess.Popen:
    env = {**os.environ, "TH_EDIT_TEST_AWAIT_OTHERS": str(await_others), "TH_EDIT_TEST_MARKERS": str(markers),
           "TH_EDIT_TEST_TRIAL_SECONDS": str(TRIAL_SECONDS),
           "OMP_NUM_THREADS": "1",  # three processes on a few cores: threads of their own only slow each other
           "PYTHONPATH": os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, str(TESTS / "search_process.py"), *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_two_workers_share_a_study_and_a_killed_workers_trial_is_made_up(backend, request, inputs, tmp_path):
    """A search process and two --worker processes on one study; one worker is killed (SIGKILL) in
    the middle of a trial. The study still finishes exactly CAP trials, none lost or run twice; the
    search process alone evaluates the held-out prompts and writes a recipe that loads."""
    import optuna

    model, channels = inputs
    url = storage_url(backend, request, tmp_path, "twoworkers")
    markers = tmp_path / "markers"
    markers.mkdir()
    out = tmp_path / "out" / "recipe.yaml"
    common = search_args(model, channels, "--storage", url, "--study", "shared", "--out", str(out))
    started = time.perf_counter()
    # Each process's first trial waits until the other two have begun theirs: all three are inside a
    # trial when the test kills one (a worker that started early cannot run the whole cap alone).
    search = spawn([*common, "--trials", str(CAP)], markers, await_others=2)
    workers = [spawn([*common, "--worker"], markers, await_others=2) for _ in range(2)]
    victim, survivor = workers
    deadline = time.monotonic() + 180
    while not (list(markers.glob(f"{victim.pid}-*")) and list(markers.glob(f"{survivor.pid}-*"))):
        assert victim.poll() is None and survivor.poll() is None and time.monotonic() < deadline, victim.communicate()
        time.sleep(0.05)
    # Each worker is inside a trial (its parameters are stored): kill one.
    last_marker = max(int(m.name.split("-")[1]) for m in markers.glob(f"{victim.pid}-*"))
    victim.send_signal(signal.SIGKILL)
    search_out, search_err = search.communicate(timeout=180)
    survivor_out, survivor_err = survivor.communicate(timeout=60)
    wall = time.perf_counter() - started
    assert search.returncode == 0, search_err
    assert survivor.returncode == 0, survivor_err
    victim.wait()

    trials = trials_of(url, "shared")
    state = optuna.trial.TrialState
    complete = [t for t in trials if t.state == state.COMPLETE]
    assert len(complete) == CAP  # the cap, across processes
    assert not [t for t in trials if t.state in (state.RUNNING, state.WAITING)]  # nothing left hanging
    failed = [t for t in trials if t.state == state.FAIL and not t.user_attrs.get(SURPLUS_ATTR)]
    assert [t.number for t in failed] == [last_marker]  # the killed trial, failed by the heartbeat check
    killed_trial = failed[0].number
    assert all(t.user_attrs["record"]["number"] == t.number for t in complete)  # each trial's own result, once
    retries = [t for t in complete if t.system_attrs.get("failed_trial") == killed_trial]
    assert len(retries) <= 1
    if retries:  # run again with the same parameters (unless the cap was reached first: then nothing to make up)
        assert retries[0].params == failed[0].params
    ran_by = {}
    for marker in markers.iterdir():
        pid, number = map(int, marker.name.split("-"))
        ran_by.setdefault(pid, set()).add(number)
    assert ran_by.get(survivor.pid) and ran_by.get(search.pid)  # both survivors did trials

    # One held-out judgement, by the search process: its table and outputs; the workers print and write nothing.
    assert search_out.count("held-out prompts (seed") == 1, search_out
    assert survivor_out == ""
    report = json.loads(out.with_suffix(".search.json").read_text())
    assert len(report["trials"]) == CAP and report["held_out"]
    assert report["chosen_trial"] in {t.number for t in complete}
    assert parse_recipe(out.read_text()).edits  # a valid recipe, with the chosen trial's edits
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(
        [out.name, out.with_suffix(".search.json").name, out.with_suffix(".frontier.png").name])
    print(f"\n[{backend}] {len(trials)} trials in the study: {len(complete)} complete, killed trial {killed_trial} "
          f"failed, retried as {[t.number for t in retries]}, "
          f"surplus {sum(bool(t.user_attrs.get(SURPLUS_ATTR)) for t in trials)}; "
          f"ran: search process {len(ran_by.get(search.pid, ()))}, survivor {len(ran_by.get(survivor.pid, ()))}, "
          f"killed worker {len(ran_by.get(victim.pid, ()))}; wall {wall:.1f} s")


def _run(args):
    return CliRunner().invoke(main, args)


def _one_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_a_worker_with_other_settings_or_another_model_is_refused(inputs, tmp_path):
    """The refusal names the first differing field, comes before the worker writes to the study, and
    a --worker without a database is refused."""
    model, channels = inputs
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    out = tmp_path / "recipe.yaml"
    first = _run([*search_args(model, channels, "--storage", url, "--out", str(out)), "--trials", "2"])
    assert first.exit_code == 0, first.output
    before = [(t.number, t.state) for t in trials_of(url, "th-edit-search")]
    other_prompts = _run([*search_args(model, channels, "--storage", url), "--tune-prompts", "6", "--worker"])
    assert "settings.tune_prompts = 4, this run has 6" in _one_line(other_prompts)
    other_model = tiny_checkpoint(tmp_path / "other", "llama", seed=3)
    refused = _one_line(_run([*search_args(other_model, channels, "--storage", url), "--worker"]))
    assert "model.weights_sha256" in refused and "th-edit-search" in refused
    assert [(t.number, t.state) for t in trials_of(url, "th-edit-search")] == before
    same = _run([*search_args(model, channels, "--storage", url), "--worker"])  # nothing left to do: it leaves at once
    assert same.exit_code == 0, same.output
    assert [(t.number, t.state) for t in trials_of(url, "th-edit-search")] == before
    assert "needs --storage" in _one_line(_run([*search_args(model, channels), "--worker"]))


def test_resume_with_a_journal_of_another_model_is_refused(inputs, tmp_path):
    model, channels = inputs
    out = tmp_path / "recipe.yaml"
    journal = out.with_suffix(".study.log")
    first = _run([*search_args(model, channels, "--out", str(out)), "--trials", "2"])
    assert first.exit_code == 0, first.output
    for path in out.parent.glob("recipe.*"):
        if path != journal:
            path.unlink()
    kept = journal.read_bytes()
    other_model = tiny_checkpoint(tmp_path / "other", "llama", seed=3)
    refused = _one_line(_run([*search_args(other_model, channels, "--out", str(out)), "--trials", "3", "--resume"]))
    assert "model.weights_sha256" in refused
    refused = _one_line(_run([*search_args(model, channels, "--out", str(out)), "--trials", "3", "--seed", "4", "--resume"]))
    assert "settings.seed = 0, this run has 4" in refused
    assert journal.read_bytes() == kept and not out.exists()
    resumed = _run([*search_args(model, channels, "--out", str(out)), "--trials", "3", "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert len(json.loads(out.with_suffix(".search.json").read_text())["trials"]) == 3


SECRET = "th-edit-db-secret-97"


def test_database_credentials_are_never_printed_or_saved(pg, inputs, tmp_path, monkeypatch):
    """A password in the URL (through $TH_EDIT_STORAGE) or in $PGPASSWORD: in no output, no file, not
    in the database; a wrong one fails in one line that shows it as ***."""
    model, channels = inputs
    pg.create_database("private", owner="searcher", password=SECRET)
    out = tmp_path / "s" / "recipe.yaml"
    monkeypatch.setenv("TH_EDIT_STORAGE", pg.url("searcher", "private", password=SECRET))
    shown = []
    result = _run([*search_args(model, channels, "--out", str(out))[1:], "--trials", "3"])  # not --quiet: every message
    assert result.exit_code == 0, result.output
    shown.append(result.output)
    monkeypatch.delenv("TH_EDIT_STORAGE")
    monkeypatch.setenv("PGPASSWORD", SECRET)
    resumed = _run([*search_args(model, channels, "--out", str(out))[1:], "--storage", pg.url("searcher", "private"),
                    "--trials", "4", "--resume", "--force"])
    assert resumed.exit_code == 0, resumed.output
    shown.append(resumed.output)
    monkeypatch.delenv("PGPASSWORD")
    applied = _run(["apply", str(out), "--no-bench", "--out", str(tmp_path / "edited")])
    assert applied.exit_code == 0, applied.output
    shown.append(applied.output)
    wrong = _run([*search_args(model, channels, "--out", str(tmp_path / "w.yaml")),
                  "--storage", pg.url("searcher", "private", password=SECRET + "x"), "--worker"])
    line = _one_line(wrong)
    assert "postgresql://searcher:***@/private" in line and "password authentication failed" in line
    shown.append(wrong.output)
    for text in shown:
        assert SECRET not in text
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) > 6
    for path in written:
        assert SECRET.encode() not in path.read_bytes(), path
    database = pg.dump("private")
    assert RECORD_ATTR in database and "weights_sha256" in database  # the dump does hold the study
    assert SECRET not in database


@pytest.mark.parametrize("url,fragment", [
    ("oracle://me:pw@host/db", "unsupported database 'oracle'"),
    ("not a url", "is not a database URL"),
    ("mysql://me:pw@host/db", "needs the package 'mysqlclient'"),
])
def test_a_storage_url_that_cannot_work_is_one_line_without_its_password(inputs, tmp_path, url, fragment):
    model, channels = inputs
    line = _one_line(_run([*search_args(model, channels, "--out", str(tmp_path / "r.yaml")), "--storage", url]))
    assert fragment in line and ":pw@" not in line
    assert list(tmp_path.iterdir()) == []


def test_redaction():
    from th_edit.search.storage import StudyStore

    store = StudyStore.parse("postgresql://me:p%40ss@/db?host=/tmp/s", Path("j"), "x", 1)
    assert store.shown == "postgresql://me:***@/db?host=/tmp/s"
    assert store.redact("failed for postgresql://me:p%40ss@/db and p@ss") == "failed for postgresql://me:***@/db and ***"
    assert StudyStore.parse("sqlite:///a.db", Path("j"), "x", 1).shown == "sqlite:///a.db"


def test_a_process_that_loses_the_race_to_create_the_tables_looks_again(monkeypatch):
    """What the loser of the schema race sees (SQLite: "table ... already exists"; PostgreSQL: a unique
    key of its catalog) is retried; any other database error is not."""
    import optuna
    from sqlalchemy.exc import IntegrityError, OperationalError

    from th_edit.search import storage

    monkeypatch.setattr(storage.time, "sleep", lambda s: None)
    errors = [OperationalError("CREATE TABLE trial_values", {}, Exception("table trial_values already exists")),
              IntegrityError("INSERT", {}, Exception("duplicate key value violates unique constraint"))]
    calls = []

    def rdb(url, **kwargs):
        calls.append(url)
        if errors:
            raise errors.pop(0)
        return "storage"

    monkeypatch.setattr(optuna.storages, "RDBStorage", rdb)
    assert storage._rdb_storage("sqlite:///x.db", {}, {}) == "storage" and len(calls) == 3
    monkeypatch.setattr(optuna.storages, "RDBStorage", lambda url, **kw: (_ for _ in ()).throw(
        OperationalError("SELECT", {}, Exception("database is locked"))))
    with pytest.raises(OperationalError):
        storage._rdb_storage("sqlite:///x.db", {}, {})


def test_processes_opening_one_new_sqlite_study_storage_at_once_all_succeed(tmp_path):
    """The race the retry is for, for real: several processes open one empty SQLite file together."""
    opener = ("import sys, time\nfrom pathlib import Path\nfrom th_edit.search.storage import StudyStore\n"
              "while time.time() < float(sys.argv[2]): time.sleep(0.001)\n"
              "StudyStore.parse(sys.argv[1], Path('j'), 'x', 5).optuna_storage()\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")])}
    for round_ in range(3):
        url = f"sqlite:///{tmp_path / f'race{round_}.db'}"
        start = str(time.time() + 4)  # all processes have imported optuna and sqlalchemy by then
        procs = [subprocess.Popen([sys.executable, "-c", opener, url, start], env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(4)]
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
