"""The second virtual environment with transformers 4.x (made by `make tf4`), for compatibility tests."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROBE = Path(__file__).resolve().parent / "tf_probe.py"


def tf4_python() -> Path:
    """The venv's python (TH_EDIT_TF4_VENV overrides where it is); skips the test when absent."""
    # Resolved against the repository: the probes run with a temporary working directory.
    venv = ROOT / os.environ.get("TH_EDIT_TF4_VENV", ".venv-tf4")
    python = venv / "bin" / "python"
    if not python.is_file():
        pytest.skip(f"no transformers 4.x venv at {venv}: create it with `make tf4` (`make test` does)")
    return python


def probe_here(spec: dict) -> dict:
    """tests/tf_probe.py in this process (transformers 5): {checkpoint dir: record}."""
    from tf_probe import probe as run

    return {path: run(path, spec) for path in spec["dirs"]}


def probe(python: Path, spec: dict, workdir: Path, name: str) -> dict:
    """tests/tf_probe.py under another venv's `python`: {checkpoint dir: record}."""
    import torch

    spec_path, out = workdir / f"{name}.json", workdir / f"{name}.pt"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": "", "TRANSFORMERS_VERBOSITY": "error"}
    result = subprocess.run([str(python), str(PROBE), str(spec_path), str(out)], capture_output=True, text=True, env=env,
                            cwd=workdir)
    assert result.returncode == 0, f"{python} tf_probe.py failed:\n{result.stderr[-3000:]}"
    return torch.load(out)
