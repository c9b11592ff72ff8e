"""Component attribution: the hooked gradient equals the finite difference of the weight edit."""

import pytest
import torch
from tiny import tiny_checkpoint

import th_edit
from th_edit.recipe import Edit
from th_edit.runtime.batching import left_padded
from th_edit.runtime.tokens import tokenize_prompts
from th_edit.search.attribution import component_gradients
from th_edit.tasks.sets import build_prompts

HEADS = [(1, 0), (2, 3)]


def mean_answer_log_prob(session, prompts) -> float:
    tokenized = tokenize_prompts(session.tokenizer, prompts)
    batch = left_padded(tokenized.encoded, tokenized.pad_id)
    with torch.no_grad():
        logits = session.model(**batch).logits[:, -1].double()
    return float(sum(torch.log_softmax(logits[row, ids], dim=-1)[answer]
                     for row, (ids, answer) in enumerate(tokenized.targets)) / len(prompts))


@pytest.mark.parametrize("family", ["llama", "gemma3_text", "gpt2"])
def test_gradient_equals_the_finite_difference_of_the_weight_edit(family, tmp_path):
    session = th_edit.load(str(tiny_checkpoint(tmp_path / "m", family, seed=3)))
    prompts = build_prompts(session.tokenizer, ("laundry",), [2, 3], 6, 0)
    grads = component_gradients(session, prompts, HEADS, batch_size=5)  # several batches, padded
    assert set(grads) == set(HEADS)
    eps = 1e-2
    for layer, head in HEADS:
        for component in (0, 2):
            values = []
            for alpha in (1 + eps, 1 - eps):
                with session.edited([Edit(layer=layer, head=head, circuit="ov", components=[component], scale=alpha)]):
                    values.append(mean_answer_log_prob(session, prompts))
            finite = (values[0] - values[1]) / (2 * eps)
            assert abs(finite) > 1e-5  # the component matters, so the comparison means something
            assert float(grads[(layer, head)][component]) == pytest.approx(finite, rel=2e-2, abs=1e-5)
