"""Architecture adapters: all per-family knowledge of th-edit lives in this package.

Families are data (families.py: one FamilySpec each, spec.py) read by one adapter class
(family.py); code exists only where a family's math differs."""

from __future__ import annotations

from th_edit.arch.base import Adapter, ArchInfo, LayerWeights, NormSpec, Slot
from th_edit.arch.families import ADAPTERS
from th_edit.errors import UserError

SUPPORTED_MODEL_TYPES = tuple(t for adapter in ADAPTERS for t in adapter.model_types)


def adapter_for(config) -> Adapter:
    return adapter_class(getattr(config, "model_type", None))(config)


def adapter_class(model_type: object) -> type[Adapter]:
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    raise unsupported_architecture(model_type)


def published_chat_template(model_type: object) -> str | None:
    """The family's published turn format as a chat template, for tokenizers that carry none (None: not known)."""
    try:
        spec = getattr(adapter_class(model_type), "spec", None)
    except UserError:
        return None
    return getattr(spec, "published_chat_template", None)


def unsupported_architecture(model_type: object) -> UserError:
    return UserError(
        f"unsupported architecture: model_type '{model_type}'; supported model_types: {', '.join(SUPPORTED_MODEL_TYPES)}"
    )


__all__ = ["ADAPTERS", "SUPPORTED_MODEL_TYPES", "Adapter", "ArchInfo", "LayerWeights", "NormSpec", "Slot", "adapter_class",
           "adapter_for", "published_chat_template", "unsupported_architecture"]
