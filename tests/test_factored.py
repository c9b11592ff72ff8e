"""The factored circuit (th_edit.linalg.FactoredMatrix / circuit): OV and QK of every head without forming them."""

import pytest
import torch
from tiny import tiny_model

from th_edit.arch import adapter_for
from th_edit.linalg import FactoredMatrix, circuit
from th_edit.params import LiveParameters


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_circuits_equal_the_dense_products(family):
    model = tiny_model(family)
    adapter = adapter_for(model.config)
    weights = adapter.layer_weights(LiveParameters(model), 1, dtype=torch.float64)
    dense = {"ov": weights.W_V @ weights.W_O, "qk": weights.W_Q @ weights.W_K.transpose(-1, -2)}
    x = torch.randn(weights.W_O.shape[-1], 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for name, matrix in dense.items():
        factored = circuit(weights, name)
        svd = factored.svd()
        assert torch.allclose(svd.U * svd.S[..., None, :] @ svd.V.transpose(-1, -2), matrix, atol=1e-10)
        assert torch.allclose(factored.svdvals(), torch.linalg.svdvals(matrix)[..., :svd.S.shape[-1]], atol=1e-10)
        assert torch.allclose(factored.norm(), torch.linalg.matrix_norm(matrix), rtol=1e-10)
        assert torch.allclose(factored[2] @ x, matrix[2] @ x, atol=1e-10)
        assert isinstance(factored[1:3], FactoredMatrix) and factored[1:3].left.shape[0] == 2
    with pytest.raises(ValueError):
        circuit(weights, "vo")
