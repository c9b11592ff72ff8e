"""`push`: the call sequence against a stand-in HfApi, and the real error path with no network.

No hub is reachable from this machine, so the real Hub was never contacted by these tests."""

import subprocess
import sys
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from huggingface_hub.errors import HfHubHTTPError
from test_apply import EDITS, write_recipe
from tiny import tiny_model

from th_edit import hub
from th_edit.cli import main

SECRET = "hf_th_edit_test_secret_token_123"


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("push")
    tiny_model("llama").save_pretrained(root / "base")
    recipe = write_recipe(root / "r.yaml", root / "base", EDITS, dir=str(root / "out"))
    assert CliRunner().invoke(main, ["--quiet", "apply", str(recipe)]).exit_code == 0
    return root / "out"


class FakeApi:
    def __init__(self, fail_with=None):
        self.calls, self.fail_with = [], fail_with

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        if self.fail_with:
            raise self.fail_with

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs["repo_id"], kwargs))
        return SimpleNamespace(commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/abc")


def run_push(monkeypatch, api, *args, token=SECRET):
    monkeypatch.setattr(hub, "HfApi", lambda **kwargs: api)
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    else:
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.setenv("HF_HOME", "/nonexistent-th-edit-hf-home")  # no cached login either
    return CliRunner().invoke(main, ["push", *map(str, args)])


def test_call_sequence(monkeypatch, out_dir):
    api = FakeApi()
    result = run_push(monkeypatch, api, out_dir, "me/edited", "--private", "--revision", "v1")
    assert result.exit_code == 0, result.output
    assert [c[0] for c in api.calls] == ["create_repo", "create_branch", "upload_folder"]
    assert api.calls[0][2] == {"private": True, "exist_ok": True, "repo_type": "model"}
    assert api.calls[1][2]["branch"] == "v1"
    upload = api.calls[2][2]
    assert upload["folder_path"] == str(out_dir) and upload["revision"] == "v1" and "path_in_repo" not in upload
    assert "pushed: https://huggingface.co/me/edited/commit/abc" in result.output
    assert SECRET not in result.output


def test_dry_run_contacts_nothing(monkeypatch, out_dir):
    api = FakeApi()
    result = run_push(monkeypatch, api, out_dir, "me/edited", "--dry-run", token=None)
    assert result.exit_code == 0 and api.calls == []
    for name in ("model.safetensors", "config.json", "README.md", "provenance.json", "recipe.yaml"):
        assert name in result.output


def test_no_token(monkeypatch, out_dir):
    api = FakeApi()
    result = run_push(monkeypatch, api, out_dir, "me/edited", token=None)
    assert result.exit_code == 2 and "not logged in" in result.output and api.calls == []


def _http_error(status):
    response = SimpleNamespace(status_code=status, headers={}, request=None)  # what HfHubHTTPError reads
    return HfHubHTTPError(f"{status} Client Error", response=response)


@pytest.mark.parametrize("error,fragment", [
    (_http_error(401), "HTTP 401"),
    (_http_error(403), "write access"),
    (_http_error(500), "refused the push"),
    (ConnectionError("connection refused"), "cannot reach the Hugging Face Hub"),
])
def test_hub_errors_are_one_line(monkeypatch, out_dir, error, fragment):
    result = run_push(monkeypatch, FakeApi(fail_with=error), out_dir, "me/edited")
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], result.output
    assert SECRET not in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("args,fragment", [(("nowhere", "me/x"), "no such directory"), ((".", "no-slash"), "not a checkpoint")])
def test_bad_arguments(monkeypatch, out_dir, args, fragment):
    result = run_push(monkeypatch, FakeApi(), *args)
    assert result.exit_code == 2 and fragment in result.output


def test_real_hub_client_without_network(out_dir, tmp_path):
    """The real HfApi, no network: one line, exit 2, token not shown."""
    env = {"HF_TOKEN": SECRET, "HF_HOME": str(tmp_path), "PATH": "/usr/bin:/bin",
           "HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing listens on the discard port
    proc = subprocess.run([sys.executable, "-m", "th_edit", "push", str(out_dir), "me/edited"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "cannot reach the Hugging Face Hub" in lines[0], proc.stderr
    assert SECRET not in proc.stderr + proc.stdout and "Traceback" not in proc.stderr


@pytest.mark.parametrize("repo_id", ["bad id!/x", "me/x..y", "me/" + "n" * 100])
def test_invalid_repo_ids_are_refused_before_any_call(monkeypatch, out_dir, repo_id):
    api = FakeApi()
    for extra in ([], ["--dry-run"]):
        result = run_push(monkeypatch, api, out_dir, repo_id, *extra)
        assert result.exit_code == 2 and "is not a valid Hub name" in result.output
        assert len(result.output.strip().splitlines()) == 1 and api.calls == []
