"""`verify` catches every kind of drift; interrupted writes never leave a partial checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from test_apply import EDITS, write_recipe
from tiny import tiny_model

from th_edit import checkpoint
from th_edit.cli import main


@pytest.fixture()
def edited(tmp_path):
    base = tmp_path / "base"
    tiny_model("qwen2").save_pretrained(base)
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "r.yaml", base, EDITS, dir=str(out))
    assert CliRunner().invoke(main, ["--quiet", "apply", str(recipe)]).exit_code == 0
    return base, out


def verify(out):
    return CliRunner().invoke(main, ["--quiet", "verify", str(out)])


def test_verify_ok(edited):
    result = verify(edited[1])
    assert result.exit_code == 0 and result.stdout.strip() == "ok"


def test_verify_detects_modified_weights(edited):
    weights = edited[1] / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01
    weights.write_bytes(bytes(data))
    result = verify(edited[1])
    assert result.exit_code == 1 and "model.safetensors: sha256 differs" in result.stderr


def test_verify_detects_a_changed_recipe(edited):
    recipe = edited[1] / "recipe.yaml"
    recipe.write_text(recipe.read_text().replace("scale: 2.5", "scale: 2.4"))
    result = verify(edited[1])
    assert result.exit_code == 1
    assert "recipe.yaml: sha256 differs" in result.stderr
    assert "component 0: realized singular value" in result.stderr
    assert "different weights in: model.safetensors" in result.stderr


def test_verify_detects_a_changed_base(edited):
    base, out = edited
    tiny_model("qwen2", seed=1).save_pretrained(base)
    result = verify(out)
    assert result.exit_code == 1 and "its weight files changed since apply" in result.stderr


def test_verify_detects_edited_provenance(edited):
    path = edited[1] / "provenance.json"
    record = json.loads(path.read_text())
    record["edits"][0]["components"][0]["realized"] *= 1.01
    path.write_text(json.dumps(record))
    result = verify(edited[1])
    assert result.exit_code == 1 and "differs from the recorded" in result.stderr


def test_verify_refuses_a_plain_directory(tmp_path):
    result = verify(tmp_path)
    assert result.exit_code == 2 and "not a th-edit checkpoint" in result.output


def test_interrupt_during_write_leaves_nothing(tmp_path, monkeypatch):
    base = tmp_path / "base"
    tiny_model("llama").save_pretrained(base)
    out = tmp_path / "out"
    original = checkpoint._write_one_file

    def write_then_interrupt(path, tensors, metadata):
        original(path, tensors, metadata)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "_write_one_file", write_then_interrupt)
    recipe = write_recipe(tmp_path / "r.yaml", base, EDITS, dir=str(out))
    result = CliRunner().invoke(main, ["--quiet", "apply", str(recipe)])
    assert result.exit_code == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "r.yaml"]


@pytest.mark.real
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_signals_mid_write_never_leave_a_partial_target(tmp_path, sig):
    """A real apply on smollm2-135m (540 MB write) interrupted while its weights are being written."""
    out = tmp_path / "out"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("base_model: smollm2-135m\nedits:\n  - {layer: 3, head: 1, circuit: ov, components: [0], scale: 2.0}\n"
                      f"output: {{dir: {out}}}\n")
    out.mkdir()  # with --force, an existing target must survive the interruption intact
    (out / "keep-me").write_text("previous checkpoint")
    proc = subprocess.Popen([sys.executable, "-m", "th_edit", "--quiet", "apply", str(recipe), "--force"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:
        partial = [p for p in tmp_path.glob(".out.partial-*") if (p / "model.safetensors").exists()]
        if partial and (partial[0] / "model.safetensors").stat().st_size > 1_000_000:
            break
        time.sleep(0.002)
    else:
        pytest.fail("never saw the staging directory")
    os.kill(proc.pid, sig)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert (out / "keep-me").read_text() == "previous checkpoint" and not (out / "model.safetensors").exists()
    leftovers = list(tmp_path.glob(".out.partial-*"))
    if sig == signal.SIGKILL:
        assert leftovers  # nothing can clean up after kill -9 ... until the next run does
        rerun = subprocess.run([sys.executable, "-m", "th_edit", "--quiet", "apply", str(recipe), "--force"], capture_output=True)
        assert rerun.returncode == 0, rerun.stderr
        assert not list(tmp_path.glob(".out.partial-*")) and (out / "model.safetensors").is_file()
    else:
        assert not leftovers


@pytest.fixture()
def sharded(tmp_path):
    base = tmp_path / "base"
    tiny_model("llama").save_pretrained(base)
    out = tmp_path / "out"
    recipe = write_recipe(tmp_path / "r.yaml", base, EDITS, dir=str(out), max_shard_size="20KB")
    assert CliRunner().invoke(main, ["--quiet", "apply", str(recipe)]).exit_code == 0
    assert verify(out).exit_code == 0
    return out


def shards(out):
    return sorted(set(json.loads((out / "model.safetensors.index.json").read_text())["weight_map"].values()))


def test_verify_reports_a_missing_shard(sharded):
    second = shards(sharded)[1]
    (sharded / second).unlink()
    result = verify(sharded)
    assert result.exit_code == 1 and f"{second}: listed in provenance.json but missing" in result.stderr


def test_verify_checks_the_shard_index(sharded):
    index = sharded / "model.safetensors.index.json"
    record = json.loads(index.read_text())
    name = sorted(record["weight_map"])[0]
    first, last = shards(sharded)[0], shards(sharded)[-1]
    record["weight_map"][name] = last if record["weight_map"][name] != last else first
    index.write_text(json.dumps(record, indent=2) + "\n")
    result = verify(sharded)
    assert result.exit_code == 1 and "model.safetensors.index.json: sha256 differs" in result.stderr
    index.unlink()
    result = verify(sharded)
    assert result.exit_code == 1 and "model.safetensors.index.json: listed in provenance.json but missing" in result.stderr


def test_verify_reports_a_stray_weight_file(sharded):
    (sharded / "extra.safetensors").write_bytes((sharded / shards(sharded)[0]).read_bytes())
    result = verify(sharded)
    assert result.exit_code == 1 and "extra.safetensors: weight file not listed" in result.stderr


def test_verify_reports_an_edit_missing_from_provenance(edited):
    path = edited[1] / "provenance.json"
    record = json.loads(path.read_text())
    dropped = record["edits"].pop()
    path.write_text(json.dumps(record))
    result = verify(edited[1])
    where = f"layer {dropped['layer']} head {dropped['head']} {dropped['circuit'].upper()}"
    assert result.exit_code == 1 and f"{where} component" in result.stderr and "missing from provenance.json" in result.stderr


@pytest.mark.parametrize("damage", [lambda r: [], lambda r: {k: v for k, v in r.items() if k != "weights_sha256"},
                                    lambda r: {**r, "edits": [{"layer": 1}]}])
def test_verify_damaged_provenance_is_one_line(edited, damage):
    path = edited[1] / "provenance.json"
    path.write_text(json.dumps(damage(json.loads(path.read_text()))))
    result = verify(edited[1])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1 and "provenance.json" in result.output


def test_verify_a_relative_base_from_elsewhere(tmp_path, monkeypatch):
    tiny_model("llama").save_pretrained(tmp_path / "base")
    monkeypatch.chdir(tmp_path)
    recipe = write_recipe(tmp_path / "r.yaml", "base", EDITS, dir="out")  # relative to the current directory
    assert CliRunner().invoke(main, ["--quiet", "apply", str(recipe)]).exit_code == 0
    monkeypatch.chdir("/")
    found = verify(tmp_path / "out")  # .th-edit-local.json says where the base was found
    assert found.exit_code == 0 and found.stdout.strip() == "ok", found.output
    (tmp_path / "base").rename(tmp_path / "moved")
    lost = verify(tmp_path / "out")
    assert lost.exit_code == 2 and "pass --base MODEL" in lost.output
    found = CliRunner().invoke(main, ["--quiet", "verify", str(tmp_path / "out"), "--base", str(tmp_path / "moved")])
    assert found.exit_code == 0 and found.stdout.strip() == "ok"
    tiny_model("llama", seed=1).save_pretrained(tmp_path / "other")
    wrong = CliRunner().invoke(main, ["--quiet", "verify", str(tmp_path / "out"), "--base", str(tmp_path / "other")])
    assert wrong.exit_code == 1 and "its weight files changed since apply" in wrong.stderr
