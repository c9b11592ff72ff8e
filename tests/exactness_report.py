"""Print, per family, the largest errors of the exactness check on its tiny random model (run by hand).

    PYTHONPATH=. python tests/exactness_report.py

Every layer of tiny.tiny_model(model_type, seed=0), input ids of shape [2, 9] drawn with seed 1
(as test_arch_exactness does). "abs" is the largest absolute difference of any checked quantity
(q, k, v, z, attention output, post-norm output, residual write; after the best positive
per-vector scale where a norm's per-token scale is left out), "rel" the largest relative (Frobenius)
error; "shared scale" is the largest spread across heads of that fitted scale where a QK-norm spans
all heads (OLMo-2, OLMoE: 0 when the scale is one per token).
"""

from __future__ import annotations

import exactness
import torch
from tiny import FAMILIES, VOCAB, tiny_model

from th_edit.arch import adapter_for

absolute: list[float] = []
_rel_err = exactness.rel_err


def _recording_rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    absolute.append((actual.double() - expected.double()).abs().max().item())
    return _rel_err(actual, expected)


exactness.rel_err = _recording_rel_err  # rel_err_up_to_scale calls it with the scaled vectors

print(f"{'model_type':<12} {'max abs':>10} {'max rel':>10} {'shared scale':>13}  checked")
for model_type in FAMILIES:
    model = tiny_model(model_type)
    adapter = adapter_for(model.config)
    input_ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))
    absolute.clear()
    errors: dict[str, float] = {}
    for layer in range(adapter.n_layers):
        for key, value in exactness.check_layer(model, adapter, input_ids, layer).items():
            errors[key] = max(errors.get(key, 0.0), value)
    shared = max((v for k, v in errors.items() if k.endswith("scale_shared")), default=None)
    rel = max(v for k, v in errors.items() if not k.endswith("scale_shared"))
    checked = ",".join(k for k in errors if not k.endswith("scale_shared"))
    print(f"{model_type:<12} {max(absolute):>10.2e} {rel:>10.2e} {'' if shared is None else f'{shared:.2e}':>13}  {checked}")
