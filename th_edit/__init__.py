"""th-edit: find and edit low-rank communication channels between attention heads.

The Python API (imported lazily, so `th-edit --help` stays fast):

    import th_edit
    m = th_edit.load("smollm2-135m")             # a Session: model, tokenizer, adapter, cached SVDs
    m.svd(20, 0, "ov").S                          # singular values of head 20.0's effective OV
    recipe = th_edit.Recipe.from_yaml("recipes/smollm2-135m-example.yaml")
    with m.edited(recipe):                        # weights swapped in place, restored exactly on exit
        report = th_edit.bench.laundry(m, n_items=[4, 5, 6], n_prompts=200)
    th_edit.edit_model(hf_model, recipe)          # any loaded transformers model, edited in place
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("th-edit")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

_LAZY = {
    "load": "th_edit.session", "Session": "th_edit.session", "edit_model": "th_edit.session",
    "ComputedEdit": "th_edit.session", "Recipe": "th_edit.recipe", "Edit": "th_edit.recipe",
    "UserError": "th_edit.errors",
}
_SUBMODULES = ("bench", "hooks", "channels", "search", "subspace")

__all__ = ["__version__", *_LAZY, *_SUBMODULES]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"th_edit.{name}")
    raise AttributeError(f"module 'th_edit' has no attribute {name!r}")
