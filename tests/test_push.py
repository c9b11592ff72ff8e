"""`push`: the call sequence against a stand-in HfApi, and the real error path with no network.

No hub is reachable from this machine, so the real Hub was never contacted by these tests."""

import glob
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
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
    (HFValidationError("Invalid revision name"), "the Hub client refused the push to 'me/edited': Invalid revision"),
])
def test_hub_errors_are_one_line(monkeypatch, out_dir, error, fragment):
    result = run_push(monkeypatch, FakeApi(fail_with=error), out_dir, "me/edited")
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], result.output
    assert SECRET not in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("args,fragment", [(("nowhere", "me/x"), "no such directory"),
                                           ((".", "no-slash"), "not a checkpoint written by th-edit")])
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


BAD_BRANCHES = ["../../x", "a..b", "a b", "x.lock", "dir/.hidden", ".x", "x/", "/x", "x.", "a@{b", "a//b", "a:b",
                "a~1", "a^", "a?", "a*", "a[b", "a\\b", "tab\there", "", "-x", "@", "HEAD"]
GOOD_BRANCHES = ["main", "v1.0", "feature/x", "ok-name_1", "r@1", "déjà"]


@pytest.mark.parametrize("revision", BAD_BRANCHES)
def test_an_invalid_revision_is_refused_before_any_call(monkeypatch, out_dir, revision):
    """`--revision ../../x` reached the Hub client, which quoted it into a URL."""
    api = FakeApi()
    for extra in ([], ["--dry-run"]):
        result = run_push(monkeypatch, api, out_dir, "me/edited", "--revision", revision, *extra)
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and "is not a valid branch name" in lines[0] and api.calls == [], result.output


@pytest.mark.parametrize("revision", GOOD_BRANCHES)
def test_a_valid_revision_is_pushed_to(monkeypatch, out_dir, revision):
    api = FakeApi()
    result = run_push(monkeypatch, api, out_dir, "me/edited", "--revision", revision)
    assert result.exit_code == 0, result.output
    assert ("create_branch", "me/edited", {"branch": revision, "exist_ok": True, "repo_type": "model"}) in api.calls


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_branch_rules_agree_with_git():
    """The same verdict as `git check-ref-format --branch` for every name above."""
    for name in BAD_BRANCHES + GOOD_BRANCHES:
        if not name or "\t" in name or name == "@":
            continue  # git's command line reads these otherwise ("@" is HEAD's branch to it); all refused above
        proc = subprocess.run(["git", "check-ref-format", "--branch", name], capture_output=True, cwd="/")
        ours = True
        try:
            hub.check_branch_name(name)
        except Exception:
            ours = False
        assert ours == (proc.returncode == 0), name


@pytest.fixture()
def cluttered(out_dir, tmp_path):
    """The checkpoint, plus what a folder collects after apply: secrets, notes, an old shard."""
    folder = tmp_path / "out"
    shutil.copytree(out_dir, folder)
    (folder / ".env").write_text("HF_TOKEN=" + SECRET)
    (folder / "notes.txt").write_text("private")
    (folder / "model-00001-of-00002.safetensors").write_bytes(b"stale")
    return folder


def test_push_uploads_only_what_apply_wrote(monkeypatch, cluttered):
    record = json.loads((cluttered / "provenance.json").read_text())
    expected = {*record["weights_sha256"], *record["files_sha256"], "provenance.json"}
    api = FakeApi()
    result = run_push(monkeypatch, api, cluttered, "me/edited")
    assert result.exit_code == 0, result.output
    upload = api.calls[-1][2]
    assert set(upload["allow_patterns"]) == expected
    assert not {".env", "notes.txt", "model-00001-of-00002.safetensors", ".th-edit-local.json"} & set(upload["allow_patterns"])
    dry = run_push(monkeypatch, FakeApi(), cluttered, "me/edited", "--dry-run")
    listed = {line.split()[0] for line in dry.output.splitlines() if line.startswith("  ")}
    assert listed == expected
    assert "not uploaded (not written by apply): .env, .th-edit-local.json, model-00001-of-00002.safetensors, notes.txt" \
        in dry.output


def test_upload_filter_keeps_exactly_the_listed_files(cluttered):
    """The allow_patterns above, through huggingface_hub's own filter."""
    from huggingface_hub.utils import filter_repo_objects

    plan = hub.plan_push(cluttered, "me/edited", False, None)
    names = sorted(p.name for p in cluttered.iterdir())
    kept = list(filter_repo_objects(names, allow_patterns=[glob.escape(n) for n, _ in plan.files]))
    assert sorted(kept) == sorted(n for n, _ in plan.files)


def test_push_refuses_a_file_changed_since_apply(monkeypatch, cluttered):
    (cluttered / "config.json").write_text((cluttered / "config.json").read_text().replace("}", ', "auto_map": {}}', 1))
    api = FakeApi()
    result = run_push(monkeypatch, api, cluttered, "me/edited")
    assert result.exit_code == 2 and "config.json changed since apply" in result.output and api.calls == []


def test_push_refuses_a_doctored_file_list(monkeypatch, cluttered, tmp_path):
    (tmp_path / "secret").write_text(SECRET)
    record = json.loads((cluttered / "provenance.json").read_text())
    record["files_sha256"]["../secret"] = hashlib.sha256(SECRET.encode()).hexdigest()
    (cluttered / "provenance.json").write_text(json.dumps(record))
    api = FakeApi()
    result = run_push(monkeypatch, api, cluttered, "me/edited", "--dry-run")
    assert result.exit_code == 2 and "'../secret' is not a file name apply writes" in result.output and api.calls == []


def _push_against(out_dir, home, body: bytes, content_type: str):
    """`th-edit push` (the real HfApi) against a local HF_ENDPOINT that answers every request
    with `body` and status 200; HF_HOME is a temporary directory, since huggingface_hub caches
    some replies there."""
    class Reply(http.server.BaseHTTPRequestHandler):
        def reply(self):
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_HEAD = do_PUT = reply

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Reply)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {"HF_TOKEN": SECRET, "HF_HOME": str(home), "PATH": "/usr/bin:/bin",
               "HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}"}
        return subprocess.run([sys.executable, "-m", "th_edit", "push", str(out_dir), "me/edited"],
                              capture_output=True, text=True, env={**env, "PYTHONPATH": os.environ.get("PYTHONPATH", "")},
                              timeout=120)
    finally:
        server.shutdown()


def _one_error_line(proc, fragment):
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert SECRET not in proc.stderr + proc.stdout
    return lines[0]


def test_a_non_json_reply_is_one_line(out_dir, tmp_path):
    """An HF_ENDPOINT (or a proxy) that answers with an HTML page."""
    proc = _push_against(out_dir, tmp_path, b"<html><body>Bad gateway</body></html>", "text/html")
    _one_error_line(proc, "did not answer with JSON")


@pytest.mark.parametrize("body", [b"[1,2,3]", b"{}", b"null", b'{"url": 5}'])
def test_a_json_reply_of_the_wrong_shape_is_one_line(out_dir, tmp_path, body):
    """JSON, but not what the Hub client expects (a list, an empty object, null, a wrong type)."""
    line = _one_error_line(_push_against(out_dir, tmp_path, body, "application/json"),
                           "answered with JSON the Hub client cannot read")
    assert "check HF_ENDPOINT" in line


def test_a_bug_in_how_th_edit_calls_the_hub_client_is_not_called_a_bad_reply():
    """Only what huggingface_hub raises while reading a reply becomes that one line: a wrong call
    (an unknown keyword) or an error in th-edit's own code keeps its traceback."""
    from huggingface_hub import HfApi

    with pytest.raises(TypeError) as wrong_call:
        HfApi().create_repo("me/x", not_an_argument=True)
    assert not hub.unreadable_reply(wrong_call.value)
    try:
        {}["url"]
    except KeyError as own:
        assert not hub.unreadable_reply(own)


def test_a_bad_reply_in_the_stand_in_api_keeps_its_traceback(monkeypatch, out_dir):
    """The stand-in's own KeyError is raised from this file, not from huggingface_hub: not a reply."""
    result = run_push(monkeypatch, FakeApi(fail_with=KeyError("url")), out_dir, "me/edited")
    assert result.exit_code == 1 and isinstance(result.exception, KeyError)


# ----------------------------------------------------------------------------------------------
# Only the weight files a checkpoint can have are uploaded, whatever provenance.json says


def _doctor(folder, section: str, name: str, data: bytes) -> None:
    """Put a file in the folder and list it, with its right sha256, in provenance.json."""
    (folder / name).write_bytes(data)
    record = json.loads((folder / "provenance.json").read_text())
    record[section][name] = hashlib.sha256(data).hexdigest()
    (folder / "provenance.json").write_text(json.dumps(record))


@pytest.mark.parametrize("section,name", [("weights_sha256", "secret.safetensors"),
                                          ("weights_sha256", "model-00001-of-00002.safetensors"),
                                          ("weights_sha256", "notes.txt"),
                                          ("files_sha256", "notes.safetensors"),
                                          ("files_sha256", "notes.txt")])
def test_push_refuses_a_file_no_checkpoint_has(monkeypatch, cluttered, section, name):
    _doctor(cluttered, section, name, SECRET.encode())
    api = FakeApi()
    for extra in ([], ["--dry-run"]):
        result = run_push(monkeypatch, api, cluttered, "me/edited", *extra)
        assert result.exit_code == 2 and f"'{name}' is not a file name apply writes" in result.output, result.output
        assert api.calls == [] and SECRET not in result.output


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharded")
    tiny_model("llama").save_pretrained(root / "base")
    recipe = write_recipe(root / "r.yaml", root / "base", EDITS, dir=str(root / "out"), max_shard_size="40KB")
    assert CliRunner().invoke(main, ["--quiet", "apply", str(recipe)]).exit_code == 0
    return root / "out"


def test_push_of_a_sharded_checkpoint_takes_exactly_the_shards_of_its_index(monkeypatch, sharded, tmp_path):
    folder = tmp_path / "out"
    shutil.copytree(sharded, folder)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1
    plan = hub.plan_push(folder, "me/edited", False, None)
    assert {name for name, _ in plan.files} >= shards | {"model.safetensors.index.json"}
    # The index itself doctored (and its hash in provenance.json updated) to name another file:
    first = sorted(index["weight_map"])[0]
    index["weight_map"][first] = "secret.safetensors"
    _doctor(folder, "weights_sha256", "model.safetensors.index.json", json.dumps(index).encode())
    _doctor(folder, "weights_sha256", "secret.safetensors", SECRET.encode())
    result = run_push(monkeypatch, FakeApi(), folder, "me/edited", "--dry-run")
    assert result.exit_code == 2 and "'secret.safetensors' is not a shard name apply writes" in result.output, result.output
