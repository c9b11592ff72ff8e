"""Nothing th-edit writes may destroy data: --force replaces only its own output, a replacement
interrupted at any step leaves (or gives back) a complete checkpoint, a full disk leaves nothing."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import one_line_error, run_cli
from click.testing import CliRunner
from test_apply import EDITS, write_recipe
from tiny import tiny_model

from th_edit import checkpoint, export, outputs
from th_edit.cli import main
from th_edit.errors import UserError
from th_edit.models import resolve


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("safety") / "base"
    tiny_model("llama").save_pretrained(path)
    return path


run = run_cli  # `th-edit --quiet ARGS`; one_line_error checks stderr only (stdout may hold the edit table)


def recipe_with_scale(tmp_path, base, scale, name="r.yaml"):
    edits = [{**EDITS[0], "scale": scale}]
    return write_recipe(tmp_path / name, base, edits)


def scale_of(checkpoint_dir: Path) -> float:
    return json.loads((checkpoint_dir / "provenance.json").read_text())["edits"][0]["components"][0]["scale"]


def hidden_leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


# ----------------------------------------------------------------------------------------------
# What --force may replace


def test_force_refuses_a_directory_of_other_things(base, tmp_path):
    models = tmp_path / "models"
    (models / "other").mkdir(parents=True)
    (models / "other" / "f").write_text("keep")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine")
    recipe = recipe_with_scale(tmp_path, base, 2.0)
    for target in (models, tmp_path / "notes"):
        one_line_error(run("apply", recipe, "--out", target, "--force"), "not a th-edit checkpoint")
    assert (models / "other" / "f").read_text() == "keep" and (tmp_path / "notes" / "a.txt").read_text() == "mine"


@pytest.mark.parametrize("out", [".", "CWD", "..", "/"])
def test_force_refuses_the_current_directory_and_its_parents(base, tmp_path, monkeypatch, out):
    work = tmp_path / "work"
    work.mkdir()
    (work / "precious.txt").write_text("keep")
    recipe = recipe_with_scale(tmp_path, base, 2.0)
    monkeypatch.chdir(work)
    one_line_error(run("apply", recipe, "--out", str(work) if out == "CWD" else out, "--force"), "current directory")
    assert (work / "precious.txt").read_text() == "keep"


def test_force_replaces_an_empty_directory_and_an_earlier_checkpoint(base, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    assert run("apply", recipe_with_scale(tmp_path, base, 2.0), "--out", out, "--force").exit_code == 0
    assert scale_of(out) == 2.0
    assert run("apply", recipe_with_scale(tmp_path, base, 3.0), "--out", out, "--force").exit_code == 0
    assert scale_of(out) == 3.0 and hidden_leftovers(tmp_path) == []


def test_force_refuses_a_checkpoint_that_holds_a_directory(base, tmp_path):
    out = tmp_path / "out"
    assert run("apply", recipe_with_scale(tmp_path, base, 2.0), "--out", out).exit_code == 0
    (out / "mine").mkdir()
    (out / "mine" / "data").write_text("keep")
    one_line_error(run("apply", recipe_with_scale(tmp_path, base, 3.0), "--out", out, "--force"), "contains the directory 'mine'")
    assert (out / "mine" / "data").read_text() == "keep"


def test_force_refuses_a_symlinked_target(base, tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    one_line_error(run("apply", recipe_with_scale(tmp_path, base, 2.0), "--out", tmp_path / "link", "--force"),
                   "symbolic link")


def test_a_target_that_changed_during_the_run_is_rechecked(base, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert run("apply", recipe_with_scale(tmp_path, base, 2.0), "--out", out).exit_code == 0
    real = export.write_weights

    def meanwhile(*args, **kwargs):  # someone replaces the old checkpoint by their own files
        for path in out.iterdir():
            path.unlink()
        (out / "thesis.tex").write_text("keep")
        return real(*args, **kwargs)

    monkeypatch.setattr("th_edit.apply.write_weights", meanwhile)
    one_line_error(run("apply", recipe_with_scale(tmp_path, base, 3.0), "--out", out, "--force"), "not a th-edit checkpoint")
    assert (out / "thesis.tex").read_text() == "keep" and hidden_leftovers(tmp_path) == []


# ----------------------------------------------------------------------------------------------
# Interrupted replacement


CRASH = """
import os, sys
import th_edit.export as export
from th_edit import outputs
mode = sys.argv[1]
if mode == "between-renames":  # no atomic exchange here: target -> .old-*, then die before staging -> target
    export.exchange = lambda a, b: False
    export.rename_noreplace = lambda a, b: os._exit(9)
elif mode == "after-exchange":  # swapped, then die before the old checkpoint (now in staging) is removed
    def swap_then_die(a, b):
        assert outputs.exchange(a, b)
        os._exit(9)
    export.exchange = swap_then_die
from th_edit.cli import main
main(sys.argv[2:])
"""


def crash(mode: str, *args) -> None:
    proc = subprocess.run([sys.executable, "-c", CRASH, mode, "--quiet", *map(str, args)], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr


def test_crash_between_the_two_renames_is_repaired_by_the_next_run(base, tmp_path):
    out = tmp_path / "out"
    assert run("apply", recipe_with_scale(tmp_path, base, 2.0), "--out", out).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    crash("between-renames", "apply", recipe_with_scale(tmp_path, base, 3.0, "r3.yaml"), "--out", out, "--force")
    assert not out.exists()  # the only window without a target, where renameat2 is missing
    assert [n for n in hidden_leftovers(tmp_path) if ".old-" in n]
    # The next run for that target, whatever it is asked, first puts the old checkpoint back.
    result = CliRunner().invoke(main, ["apply", str(recipe_with_scale(tmp_path, base, 4.0, "r4.yaml")), "--out", str(out)])
    assert result.exit_code == 2 and "already exists" in result.output and "restored" in result.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert hidden_leftovers(tmp_path) == []


def test_kill_between_the_two_renames_puts_the_old_checkpoint_back(base, tmp_path, monkeypatch):
    """SIGTERM (turned into SystemExit) or Ctrl-C right between the renames: clean-up must restore
    the old checkpoint, not delete it with the rest."""
    out = tmp_path / "out"
    assert run("apply", recipe_with_scale(tmp_path, base, 2.0), "--out", out).exit_code == 0

    def killed(source, destination):
        raise SystemExit(143)

    monkeypatch.setattr(export, "exchange", lambda a, b: False)
    monkeypatch.setattr(export, "rename_noreplace", killed)
    assert run("apply", recipe_with_scale(tmp_path, base, 3.0), "--out", out, "--force").exit_code == 143
    assert scale_of(out) == 2.0 and hidden_leftovers(tmp_path) == []


def test_crash_after_the_exchange_leaves_the_new_checkpoint(base, tmp_path):
    if not outputs.exchange(*_two_dirs(tmp_path)):
        pytest.skip("this file system has no atomic exchange")
    out = tmp_path / "out"
    assert run("apply", recipe_with_scale(tmp_path, base, 2.0), "--out", out).exit_code == 0
    crash("after-exchange", "apply", recipe_with_scale(tmp_path, base, 3.0, "r3.yaml"), "--out", out, "--force")
    assert scale_of(out) == 3.0 and run("verify", out).exit_code == 0  # complete, at every instant
    assert [n for n in hidden_leftovers(tmp_path) if ".partial-" in n]  # the old one, awaiting removal
    assert run("apply", recipe_with_scale(tmp_path, base, 4.0, "r4.yaml"), "--out", out, "--force").exit_code == 0
    assert scale_of(out) == 4.0 and hidden_leftovers(tmp_path) == []


def _two_dirs(tmp_path):
    first, second = tmp_path / "x1", tmp_path / "x2"
    first.mkdir()
    second.mkdir()
    (first / "one").write_text("1")
    return first, second


def test_exchange_swaps_atomically_where_available(tmp_path):
    first, second = _two_dirs(tmp_path)
    if not outputs.exchange(first, second):
        pytest.skip("this file system has no atomic exchange")
    assert (second / "one").is_file() and not (first / "one").exists()


def test_replacement_uses_the_exchange_where_available(base, tmp_path, monkeypatch):
    """With RENAME_EXCHANGE the target exists before and after the one step that replaces it."""
    out = tmp_path / "out"
    assert run("apply", recipe_with_scale(tmp_path, base, 2.0), "--out", out).exit_code == 0
    seen = []

    def watched(a, b):
        seen.append((out / "provenance.json").is_file())
        done = outputs.exchange(a, b)
        seen.append((out / "provenance.json").is_file())
        return done

    monkeypatch.setattr(export, "exchange", watched)
    assert run("apply", recipe_with_scale(tmp_path, base, 3.0), "--out", out, "--force").exit_code == 0
    assert seen == [True, True] and scale_of(out) == 3.0 and hidden_leftovers(tmp_path) == []


def test_leftover_of_th_edit_0_1_0_is_restored(base, tmp_path):
    """0.1.0 moved the old checkpoint to .<name>.old-XXXXXXXX/<name> and could die right there."""
    out = tmp_path / "out"
    assert run("apply", recipe_with_scale(tmp_path, base, 2.0), "--out", out).exit_code == 0
    legacy = tmp_path / ".out.old-k3j_x9ab"
    legacy.mkdir()
    out.rename(legacy / "out")
    result = CliRunner().invoke(main, ["apply", str(recipe_with_scale(tmp_path, base, 3.0)), "--out", str(out)])
    assert result.exit_code == 2 and "already exists" in result.output
    assert scale_of(out) == 2.0 and hidden_leftovers(tmp_path) == []


def test_a_leftover_that_is_not_a_checkpoint_is_left_alone(base, tmp_path):
    stray = tmp_path / ".out.old-123456789-abc"  # no such process
    stray.mkdir()
    (stray / "keep").write_text("?")
    assert run("apply", recipe_with_scale(tmp_path, base, 2.0), "--out", tmp_path / "out").exit_code == 0
    assert (stray / "keep").read_text() == "?"


def test_losing_a_race_is_one_line(base, tmp_path, monkeypatch):
    """Two `apply --force` to one target: without an atomic exchange the second rename of the
    slower run finds the faster run's checkpoint in place (ENOTEMPTY in 0.1.0: a traceback)."""
    out, other = tmp_path / "out", tmp_path / "other"
    assert run("apply", recipe_with_scale(tmp_path, base, 2.0), "--out", out).exit_code == 0
    assert run("apply", recipe_with_scale(tmp_path, base, 5.0, "r5.yaml"), "--out", other).exit_code == 0
    real = outputs.rename_noreplace

    def faster_run_finishes_first(source, destination):
        if destination == out:
            other.rename(out)
        return real(source, destination)

    monkeypatch.setattr(export, "exchange", lambda a, b: False)
    monkeypatch.setattr(export, "rename_noreplace", faster_run_finishes_first)
    one_line_error(run("apply", recipe_with_scale(tmp_path, base, 3.0), "--out", out, "--force"), "another run replaced")
    assert scale_of(out) == 5.0 and hidden_leftovers(tmp_path) == []


def test_a_target_created_during_a_run_without_force_is_kept(base, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real = export.write_weights

    def meanwhile(*args, **kwargs):
        out.mkdir()
        (out / "theirs").write_text("keep")
        return real(*args, **kwargs)

    monkeypatch.setattr("th_edit.apply.write_weights", meanwhile)
    one_line_error(run("apply", recipe_with_scale(tmp_path, base, 3.0), "--out", out), "appeared while writing")
    assert [p.name for p in out.iterdir()] == ["theirs"] and hidden_leftovers(tmp_path) == []


# ----------------------------------------------------------------------------------------------
# Disk full


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("existing", [False, True])
def test_disk_full_while_writing_weights(base, tmp_path, monkeypatch, existing):
    out = tmp_path / "out"
    if existing:
        assert run("apply", recipe_with_scale(tmp_path, base, 2.0), "--out", out).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()} if existing else None
    real = checkpoint._write_one_file

    def half_then_full(path, tensors, metadata):
        Path(path).write_bytes(b"\0" * 1000)  # a partial file, as a full disk leaves it
        _disk_full()

    monkeypatch.setattr(checkpoint, "_write_one_file", half_then_full)
    line = one_line_error(run("apply", recipe_with_scale(tmp_path, base, 3.0), "--out", out, "--force"),
                          "no space left on device")
    assert str(out) in line
    monkeypatch.setattr(checkpoint, "_write_one_file", real)
    assert hidden_leftovers(tmp_path) == []
    assert ({p.name: p.read_bytes() for p in out.iterdir()} == before) if existing else not out.exists()


def test_disk_full_while_writing_the_small_files(base, tmp_path, monkeypatch):
    real = Path.write_text

    def full_at_provenance(self, *args, **kwargs):
        if self.name == "provenance.json":
            _disk_full()
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_at_provenance)
    one_line_error(run("apply", recipe_with_scale(tmp_path, base, 3.0), "--out", tmp_path / "new" / "out"), "no space left")
    assert not (tmp_path / "new").exists() and hidden_leftovers(tmp_path) == []  # nor the directory made for it


def test_atomic_files_all_or_none(tmp_path):
    first, second = tmp_path / "new" / "dir" / "a.json", tmp_path / "new" / "dir" / "b.png"
    with pytest.raises(UserError, match="no space left on device"):
        with outputs.atomic_files([first, second], force=False) as (a, b):
            a.write_text("{}")
            b.write_bytes(b"half")
            _disk_full()
    assert not (tmp_path / "new").exists()  # no file, and not the directories made for them
    with outputs.atomic_files([first, second], force=False) as (a, b):
        a.write_text("{}")
        b.write_bytes(b"png")
    assert first.read_text() == "{}" and second.read_bytes() == b"png"
    assert sorted(p.name for p in first.parent.iterdir()) == ["a.json", "b.png"]


def test_atomic_files_never_overwrite_without_force(tmp_path):
    path = tmp_path / "theirs.json"
    path.write_text("theirs")
    with pytest.raises(UserError, match="appeared while writing"):
        with outputs.atomic_files([path], force=False) as (partial,):
            partial.write_text("ours")
    assert path.read_text() == "theirs" and [p.name for p in tmp_path.iterdir()] == ["theirs.json"]
    with outputs.atomic_files([path], force=True) as (partial,):
        partial.write_text("ours")
    assert path.read_text() == "ours"


# ----------------------------------------------------------------------------------------------
# Names


def test_a_non_utf8_output_name_fails_before_any_work(base, tmp_path):
    recipe = recipe_with_scale(tmp_path, base, 2.0)
    proc = subprocess.run([sys.executable, "-m", "th_edit", "apply", str(recipe), "--out", os.fsencode(tmp_path) + b"/out-\xff"],
                          capture_output=True, text=True)
    one_line_error(proc, "not valid UTF-8")
    assert "σ" not in proc.stdout  # before the edit
    assert sorted(os.listdir(tmp_path)) == ["r.yaml"]


def test_an_unknown_model_gets_a_did_you_mean():
    with pytest.raises(UserError, match="did you mean 'smollm2-135m'"):
        resolve("smollm2")
    with pytest.raises(UserError) as excinfo:
        resolve("qwerty")
    assert "did you mean" not in str(excinfo.value)


# ----------------------------------------------------------------------------------------------
# bench: no overwriting without --force, and outputs complete or absent


def bench(*args):
    return CliRunner().invoke(main, ["--quiet", "bench", *map(str, args)])


@pytest.fixture
def no_model(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model or tokenizer was loaded")
    monkeypatch.setattr("th_edit.commands.bench.resolve", refuse)


def test_bench_export_never_overwrites_without_force(tmp_path, no_model):
    config = tmp_path / "config.json"
    config.write_text('{"model_type": "llama"}')
    one_line_error(bench("--task", "ioi", "--n-prompts", "3", "--export-prompts", config), "already exists (pass --force")
    assert config.read_text() == '{"model_type": "llama"}'


@pytest.mark.parametrize("existing", ["bench.json", "accuracy.png"])
def test_bench_out_never_overwrites_without_force(tmp_path, no_model, existing):
    (tmp_path / "p.jsonl").write_text("{}\n")
    (tmp_path / "res").mkdir()
    (tmp_path / "res" / existing).write_text("theirs")
    one_line_error(bench("--prompts", tmp_path / "p.jsonl", "--out", tmp_path / "res"), f"{existing} already exists")
    assert (tmp_path / "res" / existing).read_text() == "theirs"


def test_bench_export_with_force_replaces_and_disk_full_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "p.jsonl"
    target.write_text("old\n")
    assert bench("--task", "ioi", "--n-prompts", "3", "--export-prompts", target, "--force").exit_code == 0
    assert len(target.read_text().splitlines()) == 3
    from th_edit.tasks.prompts import write_jsonl

    def half_then_full(prompts, path):
        write_jsonl(prompts[:1], path)  # a truncated JSONL, as a full disk leaves it
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("th_edit.commands.bench.write_jsonl", half_then_full)
    fresh = tmp_path / "new" / "p.jsonl"
    one_line_error(bench("--task", "ioi", "--n-prompts", "3", "--export-prompts", fresh), "no space left on device")
    assert not (tmp_path / "new").exists() and hidden_leftovers(tmp_path) == []


def test_bench_outputs_are_both_written_or_neither(tmp_path, monkeypatch):
    from th_edit.commands.bench import _write_outputs

    def plot_then_full(report, path):
        Path(path).write_bytes(b"\x89PNG half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("th_edit.plots.plot_accuracy", plot_then_full)
    with pytest.raises(UserError, match="no space left on device"):
        _write_outputs({"kind": "single"}, tmp_path / "res", False)
    assert not (tmp_path / "res").exists()  # no bench.json without its plot
    monkeypatch.setattr("th_edit.plots.plot_accuracy", lambda report, path: Path(path).write_bytes(b"png"))
    _write_outputs({"kind": "single"}, tmp_path / "res", False)
    assert sorted(p.name for p in (tmp_path / "res").iterdir()) == ["accuracy.png", "bench.json"]


def test_a_failed_write_names_the_file_that_failed(tmp_path, monkeypatch):
    """The plot failing (matplotlib's OSError names no file) is reported as the plot, not bench.json."""
    from th_edit.commands.bench import _write_outputs

    def plot_then_full(report, path):
        Path(path).write_bytes(b"\x89PNG half")
        _disk_full()

    monkeypatch.setattr("th_edit.plots.plot_accuracy", plot_then_full)
    with pytest.raises(UserError) as excinfo:
        _write_outputs({"kind": "single"}, tmp_path / "res", False)
    assert f"writing {tmp_path / 'res' / 'accuracy.png'} failed: no space left on device" in str(excinfo.value)
    assert not (tmp_path / "res").exists()


def test_atomic_files_never_blame_one_file_for_an_unnamed_failure(tmp_path):
    with pytest.raises(UserError) as excinfo:
        with outputs.atomic_files([tmp_path / "a.json", tmp_path / "b.png"], force=False):
            _disk_full()
    assert f"writing {tmp_path / 'a.json'}, {tmp_path / 'b.png'} failed" in str(excinfo.value)


def test_make_parents_leaves_no_directory_when_the_disk_fills_half_way(tmp_path, monkeypatch):
    real = Path.mkdir

    def full_at_the_second(self, *args, **kwargs):
        if self.name == "b":
            _disk_full()
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", full_at_the_second)
    with pytest.raises(UserError, match="no space left on device"):
        with outputs.atomic_files([tmp_path / "a" / "b" / "c.json"], force=False):
            pass
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------
# A file that grows during a run (the search's journal)


def test_resumable_file_removes_what_this_run_began(tmp_path):
    journal = tmp_path / "new" / "s.study.log"
    with pytest.raises(UserError) as excinfo:
        with outputs.resumable_file(journal, lambda path: None):
            journal.write_text("")  # a stub, as a full disk leaves it
            _disk_full()
    assert str(excinfo.value) == f"writing {journal} failed: no space left on device (nothing was written)"
    assert not (tmp_path / "new").exists()


def test_resumable_file_keeps_work_worth_resuming_and_says_so(tmp_path):
    journal = tmp_path / "s.study.log"
    with pytest.raises(UserError) as excinfo:
        with outputs.resumable_file(journal, lambda path: f"{path.name} keeps 2 trials"):
            journal.write_text("trials")
            raise UserError("writing out.json failed: no space left on device (nothing was written)")
    assert str(excinfo.value).endswith("(nothing was written); s.study.log keeps 2 trials")
    assert journal.read_text() == "trials"


def test_resumable_file_keeps_a_file_that_existed_before(tmp_path):
    journal = tmp_path / "s.study.log"
    journal.write_text("earlier trials")
    with pytest.raises(UserError, match="no space left"):
        with outputs.resumable_file(journal, lambda path: None):
            _disk_full()
    assert journal.read_text() == "earlier trials"


def test_resumable_file_lets_other_errors_through(tmp_path):
    journal = tmp_path / "s.study.log"
    with pytest.raises(FileNotFoundError):  # about another file: not a write of the journal
        with outputs.resumable_file(journal, lambda path: None):
            journal.write_text("")
            (tmp_path / "missing").read_text()
    assert not journal.exists()


# ----------------------------------------------------------------------------------------------
# --force replaces only what an earlier checkpoint's provenance lists


@pytest.mark.parametrize("name", ["notes.txt", ".env", "model-00001-of-00002.safetensors"])
def test_force_refuses_a_checkpoint_holding_a_file_it_did_not_write(base, tmp_path, name):
    out = tmp_path / "out"
    assert run("apply", recipe_with_scale(tmp_path, base, 2.0), "--out", out).exit_code == 0
    assert (out / ".th-edit-local.json").is_file()  # th-edit's own: it does not block a replacement
    (out / name).write_text("mine")
    one_line_error(run("apply", recipe_with_scale(tmp_path, base, 3.0), "--out", out, "--force"),
                   f"it holds '{name}', which th-edit did not write")
    assert (out / name).read_text() == "mine" and scale_of(out) == 2.0
    (out / name).unlink()
    assert run("apply", recipe_with_scale(tmp_path, base, 3.0), "--out", out, "--force").exit_code == 0
    assert scale_of(out) == 3.0


def test_force_refuses_a_checkpoint_whose_provenance_lists_other_files(base, tmp_path):
    """A provenance.json edited to list notes.txt does not make --force delete it."""
    out = tmp_path / "out"
    assert run("apply", recipe_with_scale(tmp_path, base, 2.0), "--out", out).exit_code == 0
    (out / "notes.txt").write_text("mine")
    record = json.loads((out / "provenance.json").read_text())
    record["files_sha256"]["notes.txt"] = "0" * 64
    (out / "provenance.json").write_text(json.dumps(record))
    one_line_error(run("apply", recipe_with_scale(tmp_path, base, 3.0), "--out", out, "--force"),
                   "'notes.txt' is not a file name apply writes")
    assert (out / "notes.txt").read_text() == "mine"


# ----------------------------------------------------------------------------------------------
# Strict JSON everywhere


def test_every_json_text_goes_through_strict_json():
    """json.dump/json.dumps write NaN as a bare word: outside strict_json.py the package must not
    call them (nor import them under another name), so a non-strict JSON output cannot come back."""
    import ast

    import th_edit

    package = Path(th_edit.__file__).parent
    offenders = []
    for path in sorted(package.rglob("*.py")):
        if path.name == "strict_json.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            plain = isinstance(node, ast.Attribute) and node.attr in ("dump", "dumps", "JSONEncoder") \
                and isinstance(node.value, ast.Name) and node.value.id == "json"
            imported = isinstance(node, ast.ImportFrom) and node.module == "json" \
                and {alias.name for alias in node.names} & {"dump", "dumps", "JSONEncoder"}
            if plain or imported:
                offenders.append(f"{path.relative_to(package)}:{node.lineno}")
    assert offenders == [], f"use th_edit.strict_json.dumps instead: {offenders}"
