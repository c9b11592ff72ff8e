"""apply --format gguf: the patched copy of a GGUF base (th_edit.gguf_export), on tiny GGUF files
written here in llama (permuted q/k rows) and gemma3 (plain rows, a K-quant output projection) layout."""

from __future__ import annotations

import hashlib
import json

import gguf
import numpy as np
import pytest
import torch
from test_models import assert_user_error, run_cli
from tiny import tiny_checkpoint
from tiny_gguf import write_tiny_gguf

from th_edit import __version__, models
from th_edit.checkpoint import CheckpointTensors
from th_edit.gguf_export import RECIPE_KEY, VERSION_KEY, rotary_permute, rotary_unpermute

EDITS = ("  - {layer: 1, head: 1, circuit: ov, components: [0, 1], scale: 2.0}\n"
         "  - {layer: 0, head: 2, circuit: QK, components: [0, 2], scale: 0.25}\n")
EDITED = {"blk.1.attn_output.weight": "model.layers.1.self_attn.o_proj.weight",
          "blk.0.attn_q.weight": "model.layers.0.self_attn.q_proj.weight"}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TH_EDIT_CACHE", str(tmp_path / "cache"))


def _recipe(tmp_path, base, extra: str = "", edits: str = EDITS) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(f"base_model: {base}\nedits:\n{edits}{extra}")
    return str(path)


def _apply(tmp_path, arch: str, *options: str, edits: str = EDITS):
    base = write_tiny_gguf(tmp_path / f"tiny-{arch}.gguf", arch)
    out = tmp_path / "out"
    result = run_cli("apply", _recipe(tmp_path, base, edits=edits), "--out", str(out), "--no-bench", "--format",
                     "safetensors", "--format", "gguf", *options)
    assert result.exit_code == 0, result.output
    (written,) = out.glob("*.gguf")
    return base, out, written, result


def _fields(reader) -> list[tuple[str, list, object]]:
    return [(name, [t.name for t in f.types], f.contents()) for name, f in reader.fields.items()
            if not name.startswith("GGUF.")]


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_untouched_tensors_and_metadata_are_the_base_s_own(tmp_path, cache, arch):
    base_path, out, written, _ = _apply(tmp_path, arch)
    base, patched = gguf.GGUFReader(base_path), gguf.GGUFReader(written)
    recipe_sha = hashlib.sha256((out / "recipe.yaml").read_bytes()).hexdigest()
    assert _fields(patched) == _fields(base) + [(VERSION_KEY, ["STRING"], __version__), (RECIPE_KEY, ["STRING"], recipe_sha)]
    assert [t.name for t in patched.tensors] == [t.name for t in base.tensors]
    for before, after in zip(base.tensors, patched.tensors):
        if before.name in EDITED:
            assert bytes(after.data) != bytes(before.data)
        else:
            assert after.tensor_type == before.tensor_type and bytes(after.data) == bytes(before.data), before.name
    # Listed in provenance like every other file, and verify accepts the directory.
    record = json.loads((out / "provenance.json").read_text())
    assert record["files_sha256"][written.name] == hashlib.sha256(written.read_bytes()).hexdigest()
    assert "Modelfile" in record["files_sha256"] and record["output"]["formats"] == ["safetensors", "gguf"]
    assert run_cli("verify", str(out)).exit_code == 0


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_edited_tensors_are_the_gguf_package_s_quantization_of_the_float_edit(tmp_path, cache, arch):
    base_path, out, written, result = _apply(tmp_path, arch)
    base, patched = gguf.GGUFReader(base_path), gguf.GGUFReader(written)
    float_edit = CheckpointTensors(out)  # the safetensors checkpoint: the float32 edit
    for gguf_name, hf_name in EDITED.items():
        before = next(t for t in base.tensors if t.name == gguf_name)
        after = next(t for t in patched.tensors if t.name == gguf_name)
        weight = float_edit.get(hf_name).numpy()
        if arch == "llama" and "attn_q" in gguf_name:
            weight = rotary_permute(weight, 4)
        expected_type = gguf.GGMLQuantizationType.Q8_0 if before.tensor_type.name == "Q4_K" else before.tensor_type
        assert after.tensor_type == expected_type
        assert bytes(after.data) == bytes(gguf.quants.quantize(weight, expected_type))
    if arch == "gemma3":  # the Q4_K output projection fell back to Q8_0: said in one line and in the card
        assert "stored as Q8_0 instead of Q4_K" in result.output
        assert "stored as Q8_0 instead of Q4_K" in (out / "README.gguf.md").read_text()


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_qk_and_ov_edits_round_trip_through_gguf(tmp_path, cache, arch):
    """The patched file read back by th-edit's own GGUF loading (transformers' reader, which undoes
    llama.cpp's q/k permutation) holds exactly the re-quantized float edit, and each edited head's
    singular values are the recipe's targets up to the re-quantization error."""
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    from th_edit.arch import adapter_for
    from th_edit.decompose import Decompositions

    base_path, out, written, _ = _apply(tmp_path, arch, "--gguf-fallback", "f16")
    float_edit = CheckpointTensors(out)
    base = models.resolve(str(base_path)).tensors()
    resolved = models.resolve(str(written))
    reloaded = resolved.tensors()
    patched = {t.name: t for t in gguf.GGUFReader(written).tensors}
    for gguf_name, hf_name in EDITED.items():
        edit, back, before = float_edit.get(hf_name), reloaded.get(hf_name), base.get(hf_name)
        stored = gguf.quants.dequantize(patched[gguf_name].data, patched[gguf_name].tensor_type)
        if arch == "llama" and "attn_q" in gguf_name:
            stored = LlamaTensorProcessor()._reverse_permute_weights(stored, 4, 4)
        assert torch.equal(back, torch.from_numpy(np.ascontiguousarray(stored))), hf_name
        assert (back - edit).norm() < 0.5 * (back - before).norm(), hf_name  # the edit survived quantization
    adapter = adapter_for(models.load_config(resolved))
    s_base = Decompositions(adapter, base).head(0, 2, "qk").S
    s_back = Decompositions(adapter, reloaded).head(0, 2, "qk").S
    scales = torch.ones_like(s_base)
    scales[[0, 2]] = 0.25
    target = torch.sort(s_base * scales, descending=True).values
    assert torch.allclose(s_back, target, atol=0.05 * float(s_base[0])), (s_back[:4], target[:4])
    s_base = Decompositions(adapter, base).head(1, 1, "ov").S
    s_back = Decompositions(adapter, reloaded).head(1, 1, "ov").S
    scales = torch.ones_like(s_base)
    scales[[0, 1]] = 2.0
    target = torch.sort(s_base * scales, descending=True).values
    assert torch.allclose(s_back, target, atol=0.05 * float(s_base[0])), (s_back[:4], target[:4])


# A 5% scale: Q4_1 (and even Q8_0) rounding moves the edited singular values by more than 1% of that change.
SMALL_EDITS = EDITS.replace("scale: 2.0", "scale: 1.05").replace("scale: 0.25", "scale: 1.05")


def _edit_gaps(base_path, written, out) -> list[float]:
    """How far each edited singular value of the written GGUF misses the recipe's target, relative to
    the intended change, measured independently of th-edit's own report (from the file, re-decomposed)."""
    from th_edit.arch import adapter_for
    from th_edit.decompose import Decompositions

    resolved = models.resolve(str(written))
    adapter = adapter_for(models.load_config(resolved))
    before, after = Decompositions(adapter, models.resolve(str(base_path)).tensors()), Decompositions(adapter, resolved.tensors())
    gaps = []
    for layer, head, circuit, components in ((1, 1, "ov", [0, 1]), (0, 2, "qk", [0, 2])):
        old, new = before.head(layer, head, circuit), after.head(layer, head, circuit)
        match = (old.U.T @ new.U).abs() * (old.V.T @ new.V).abs()
        for k in components:
            target = 1.05 * float(old.S[k])
            gaps.append(abs(float(new.S[int(match[k].argmax())]) - target) / abs(target - float(old.S[k])))
    return gaps


def test_requant_auto_stores_an_edit_its_type_swallows_in_a_finer_type(tmp_path, cache):
    """--gguf-requant auto (the default): a small edit that Q4_1/Q8_0 re-quantization misses by more than
    1% of its change goes to the fallback type (Q8_0), then F16; said in one line and in the card; the
    file then holds the edit within 1%, and verify rebuilds it."""
    base_path, out, written, result = _apply(tmp_path, "llama", edits=SMALL_EDITS)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(written).tensors}
    assert types["blk.1.attn_output.weight"] == "Q8_0" and types["blk.0.attn_q.weight"] == "F16"  # Q4_1, Q8_0 in the base
    float_edit = CheckpointTensors(out)
    patched = {t.name: t for t in gguf.GGUFReader(written).tensors}
    for gguf_name, hf_name in EDITED.items():
        weight = float_edit.get(hf_name).numpy()
        weight = rotary_permute(weight, 4) if "attn_q" in gguf_name else weight
        assert bytes(patched[gguf_name].data) == bytes(gguf.quants.quantize(weight, patched[gguf_name].tensor_type))
    assert max(_edit_gaps(base_path, written, out)) <= 0.01
    line = "2 edited GGUF tensor(s) stored in a finer type (Q4_1→Q8_0, Q8_0→F16)"
    assert line in " ".join(result.output.split()) and line in (out / "README.gguf.md").read_text()
    assert json.loads((out / "provenance.json").read_text())["output"]["gguf_requant"] == "auto"
    assert run_cli("verify", str(out)).exit_code == 0


def test_requant_keep_writes_the_original_types_and_warns(tmp_path, cache):
    base_path, out, written, result = _apply(tmp_path, "llama", "--gguf-requant", "keep", edits=SMALL_EDITS)
    base_types = {t.name: t.tensor_type for t in gguf.GGUFReader(base_path).tensors}
    assert all(t.tensor_type == base_types[t.name] for t in gguf.GGUFReader(written).tensors)
    assert max(_edit_gaps(base_path, written, out)) > 0.01  # what auto is for
    assert "re-quantizing misses the intended change" in result.output and "finer type" not in result.output
    assert json.loads((out / "provenance.json").read_text())["output"]["gguf_requant"] == "keep"
    assert run_cli("verify", str(out)).exit_code == 0


def test_rotary_permutation_is_transformers_inverse():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    weight = np.arange(8 * 3 * 5, dtype=np.float32).reshape(8 * 3, 5)
    permuted = rotary_permute(weight, 3)
    assert not np.array_equal(permuted, weight)
    assert np.array_equal(LlamaTensorProcessor()._reverse_permute_weights(permuted, 3), weight)
    assert np.array_equal(rotary_unpermute(permuted, 3), weight)


def test_the_card_and_modelfile_name_the_gguf_file(tmp_path, cache):
    _, out, written, _ = _apply(tmp_path, "llama")
    card = (out / "README.gguf.md").read_text()  # the GGUF repo's card (README.md is the checkpoint's)
    assert written.name == "out.Q8_0.gguf"
    assert "## GGUF" in card and f"llama-cli -m {written.name}" in card and "gguf" in card.split("---")[1]
    assert "## GGUF" not in (out / "README.md").read_text()
    modelfile = (out / "Modelfile").read_text()
    assert modelfile.startswith(f"FROM ./{written.name}\n") and "<|im_start|>" in modelfile


def test_gguf_only_writes_no_safetensors(tmp_path, cache):
    base = write_tiny_gguf(tmp_path / "tiny.gguf", "llama")
    out = tmp_path / "out"
    result = run_cli("apply", _recipe(tmp_path, base, "output: {formats: [gguf]}\n"), "--out", str(out), "--no-bench")
    assert result.exit_code == 0, result.output
    assert not list(out.glob("*.safetensors")) and len(list(out.glob("*.gguf"))) == 1
    assert "library_name: gguf" in (out / "README.md").read_text()
    assert run_cli("verify", str(out)).exit_code == 0


def test_bad_inputs_are_one_line_and_write_nothing(tmp_path, cache):
    checkpoint = tiny_checkpoint(tmp_path / "st", "llama")
    out = tmp_path / "out"
    recipe = _recipe(tmp_path, checkpoint)
    assert_user_error(run_cli("apply", recipe, "--out", str(out), "--format", "gguf"), "convert_hf_to_gguf.py")
    assert_user_error(run_cli("apply", _recipe(tmp_path, checkpoint, "output: {formats: [gguf]}\n"), "--out", str(out)),
                      "needs a GGUF base")
    base = write_tiny_gguf(tmp_path / "tiny.gguf", "llama")
    models.resolve(str(base))  # dequantized once here, so that each run below prints only its error
    recipe = _recipe(tmp_path, base)
    assert_user_error(run_cli("apply", recipe, "--out", str(out), "--format", "gguf", "--gguf-fallback", "q4_k"),
                      "--gguf-fallback")
    assert_user_error(run_cli("apply", recipe, "--out", str(out), "--format", "onnx"), "--format")
    assert_user_error(run_cli("apply", recipe, "--out", str(out), "--format", "gguf", "--gguf-requant", "never"),
                      "--gguf-requant")
    assert_user_error(run_cli("apply", _recipe(tmp_path, base, "output: {formats: [gguf, gguf]}\n"), "--out", str(out)),
                      "output.formats repeats gguf")
    assert_user_error(run_cli("apply", _recipe(tmp_path, base, "output: {formats: []}\n"), "--out", str(out)),
                      "output.formats must not be empty")
    assert not out.exists()


def test_verify_rebuilds_the_gguf_and_names_a_changed_tensor(tmp_path, cache):
    _, out, written, _ = _apply(tmp_path, "llama")
    assert run_cli("verify", str(out)).exit_code == 0
    reader = gguf.GGUFReader(written)
    norm = next(t for t in reader.tensors if t.name == "blk.1.ffn_norm.weight")
    data = bytearray(written.read_bytes())
    data[norm.data_offset] ^= 0x01  # one bit of an untouched tensor
    written.write_bytes(bytes(data))
    record = json.loads((out / "provenance.json").read_text())
    record["files_sha256"][written.name] = hashlib.sha256(bytes(data)).hexdigest()  # the record changed with it
    (out / "provenance.json").write_text(json.dumps(record, indent=2))
    result = run_cli("verify", str(out))
    assert result.exit_code != 0 and "blk.1.ffn_norm.weight" in result.output, result.output


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_llama_cpp_runs_the_patched_file_like_its_dequantized_weights(tmp_path, cache, arch):
    """llama.cpp itself (llama-cpp-python) loads the patched tiny file and generates; its next-token
    log-probabilities match transformers' float32 run of the same file's dequantized weights as closely
    as on the base file, and differ from the base file's by more (the edit is what llama.cpp runs)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    base_path, out, written, _ = _apply(tmp_path, arch)
    prompts = [[int(t) for t in np.random.default_rng(i).integers(3, 256, size=12)] for i in range(8)]

    def llama(path):
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, n_threads=1, logits_all=True, verbose=False)
        rows = []
        for ids in prompts:
            llm.reset()
            llm.eval(ids)
            rows.append(torch.log_softmax(torch.tensor(np.asarray(llm.scores[llm.n_tokens - 1]), dtype=torch.float64), -1))
        # Generation runs in an instance without logits_all (llama-cpp-python 0.3.36 fails to sample with it).
        generator = llama_cpp.Llama(model_path=str(path), n_ctx=64, n_threads=1, verbose=False)
        assert generator("hello world", max_tokens=3, temperature=0.0)["usage"]["completion_tokens"] > 0
        return torch.stack(rows)

    def transformers_float(path):
        model = models.load_model(models.resolve(str(path)), dtype="float32")
        with torch.no_grad():
            return torch.stack([torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].double(), -1) for ids in prompts])

    base_gap = (llama(base_path) - transformers_float(base_path)).abs().max()
    patched_gap = (llama(written) - transformers_float(written)).abs().max()
    edit_effect = (transformers_float(written) - transformers_float(base_path)).abs().max()
    print(f"{arch}: llama.cpp vs float32 max |Δ log p|: base {base_gap:.2e}, patched {patched_gap:.2e}; edit {edit_effect:.2e}")
    assert patched_gap < 3 * base_gap + 1e-3
    assert edit_effect > 3 * patched_gap
