"""Head roles from data: mention positions, repeated sequences, planted heads, batched == one at a time."""

import math

import pytest
import torch
from tiny import FAMILIES, tiny_model, word_tokenizer

from th_edit.arch import adapter_for
from th_edit.channels.roles import copy_scores, ioi_roles, laundry_roles, repeated_roles
from th_edit.errors import UserError
from th_edit.params import LiveParameters
from th_edit.runtime.tokens import encode
from th_edit.session import Session
from th_edit.tasks.ioi import generate_ioi
from th_edit.tasks.laundry import generate_laundry
from th_edit.tasks.mentions import MentionError, _token_at, candidate_pattern, locate_mentions, mention_positions
from th_edit.tasks.prompts import TaskPrompt
from th_edit.tasks.repeated import generate_repeated, random_token_pool, special_prefix

WORDS = word_tokenizer()


# ----------------------------------------------------------------------------------------------
# Mention positions


def _check_mentions(tokenizer, prompt: TaskPrompt) -> None:
    m = mention_positions(tokenizer, prompt)
    assert list(m.ids) == encode(tokenizer, [prompt.prompt])[0]  # exactly what the benchmark feeds the model
    assert m.end == len(m.ids) - 1
    decoded = [tokenizer.decode([i]).strip() for i in m.ids]
    for index, candidate in enumerate(prompt.candidates):
        word = tokenizer.decode(tokenizer.encode(candidate, add_special_tokens=False)[:1]).strip()
        assert decoded[m.first[index]] == word
        if index == prompt.answer_position:
            assert m.second[index] is None
        else:
            assert m.first[index] < m.second[index] < m.end and decoded[m.second[index]] == word
    assert m.answer_first == m.first[prompt.answer_position]
    assert len(m.repeated_second) == prompt.n_items - 1


def _check_prompt_set(tokenizer) -> None:
    prompts = generate_laundry(tokenizer, range(2, 11), 6, seed=1) + generate_ioi(tokenizer, 40, seed=1)
    for prompt in prompts:
        _check_mentions(tokenizer, prompt)
    located, skipped = locate_mentions(tokenizer, prompts)
    assert len(located) == len(prompts) and not skipped


def test_mention_positions_word_tokenizer():
    _check_prompt_set(WORDS)


def test_ioi_positions_by_hand():
    prompt = TaskPrompt("ioi", "When Mary and John went to the store, John gave a drink to", " Mary", (" Mary", " John"), 2, 0)
    m = mention_positions(WORDS, prompt)
    tokens = WORDS.convert_ids_to_tokens(list(m.ids))
    assert tokens == "When Mary and John went to the store , John gave a drink to".split()
    assert (m.answer_first, m.repeated_first, m.repeated_second, m.end) == (1, [3], [9], 13)


@pytest.mark.parametrize("text, reason", [
    ("When Mary and John met Mary, John gave a drink to", "mentioned 2 times, expected 1"),  # the answer twice
    ("When Mary and Tom went to the store, Tom gave a drink to", "mentioned 0 times, expected 2"),
    ("When Mary and John went to the store, John and John gave a drink to", "mentioned 3 times"),
])
def test_ambiguous_mentions_are_skipped_and_counted(text, reason):
    bad = TaskPrompt("ioi", text, " Mary", (" Mary", " John"), 2, 0)
    good = TaskPrompt("ioi", "When Mary and John went to the store, John gave a drink to", " Mary", (" Mary", " John"), 2, 0)
    with pytest.raises(MentionError, match=reason):
        mention_positions(WORDS, bad)
    located, skipped = locate_mentions(WORDS, [bad, good, bad])
    assert [i for i, _ in located] == [1] and sum(skipped.values()) == 2


def test_candidates_match_whole_words_only():
    assert candidate_pattern(" cap").findall("a cap, caps, a capital, the cap") == [" cap", " cap"]
    assert not candidate_pattern(" cap").search("a_cap")
    assert candidate_pattern("cap").findall("cap recap cap.") == ["cap", "cap"]


def test_a_token_reaching_into_the_previous_text_is_ambiguous():
    match = candidate_pattern(" Mary").search("x Mary y")
    assert _token_at([(0, 1), (1, 6), (6, 8)], match, " Mary") == 1  # " Mary" with its space
    assert _token_at([(0, 1), (2, 6), (6, 8)], match, " Mary") == 1  # "Mary" without it
    with pytest.raises(MentionError, match="shares a token"):
        _token_at([(0, 6), (6, 8)], match, " Mary")


def test_slow_tokenizer_is_refused():
    class Slow:
        is_fast = False
    with pytest.raises(UserError, match="fast tokenizer"):
        mention_positions(Slow(), TaskPrompt("ioi", "a Mary b John John c", " Mary", (" Mary", " John"), 2, 0))


@pytest.mark.real  # the real tokenizers (no model is loaded)
@pytest.mark.parametrize("alias", ["smollm2-135m", "gemma-3-270m"])
def test_mention_positions_real_tokenizers(alias):
    from th_edit.models import load_tokenizer, resolve

    _check_prompt_set(load_tokenizer(resolve(alias)))


# ----------------------------------------------------------------------------------------------
# Repeated random-token sequences


def test_repeated_sequences():
    sequences = generate_repeated(WORDS, 5, 7, seed=3)
    assert sequences == generate_repeated(WORDS, 5, 7, seed=3)
    assert sequences != generate_repeated(WORDS, 5, 7, seed=4)
    special = set(WORDS.all_special_ids)
    for s in sequences:
        assert s.prefix == 0 and len(s.ids) == 14  # the word tokenizer adds no BOS, like its benchmark prompts
        block = s.ids[:7]
        assert s.ids[7:] == block and len(set(block)) == 7 and not special & set(block)
        assert list(s.second_half()) == list(range(7, 14))
    assert max(i for s in generate_repeated(WORDS, 20, 7, seed=0, vocab_size=30) for i in s.ids) < 30
    with pytest.raises(UserError):
        generate_repeated(WORDS, 5, 1, seed=0)
    with pytest.raises(UserError):
        generate_repeated(WORDS, 0, 5, seed=0)


@pytest.mark.real  # the real Gemma 3 tokenizer (no model is loaded)
def test_repeated_sequences_keep_the_bos_the_benchmark_uses():
    from th_edit.models import load_tokenizer, resolve

    tok = load_tokenizer(resolve("gemma-3-270m"))
    assert special_prefix(tok) == [tok.bos_token_id] == encode(tok, ["x"])[0][:1]
    s = generate_repeated(tok, 2, 10, seed=0)[0]
    assert s.ids[0] == tok.bos_token_id and s.prefix == 1 and s.ids[1:11] == s.ids[11:]
    pool = set(random_token_pool(tok))
    assert not pool & set(tok.added_tokens_decoder)  # no <unusedN>, <pad>, <bos>
    assert set(s.ids[1:]) <= pool


# ----------------------------------------------------------------------------------------------
# Adapter ends: embedding, final norm, unembedding


@pytest.mark.parametrize("model_type", FAMILIES)
def test_adapter_embedding_final_norm_and_unembedding(model_type):
    model = tiny_model(model_type)
    adapter = adapter_for(model.config)
    source = LiveParameters(model)
    assert torch.equal(source.get(adapter.embedding_param()), model.get_input_embeddings().weight.detach())
    assert torch.equal(adapter.unembedding(source), model.get_output_embeddings().weight.detach())
    spec = adapter.final_norm()
    module = model.get_submodule(adapter.final_norm_module())
    x = torch.randn(3, 5, adapter.d_model, generator=torch.Generator().manual_seed(0)) * 3 + 0.5
    expected = spec.normalize(x.double()) * spec.gain(source, torch.float64)
    if spec.bias:
        expected = expected + source.get(spec.bias).double()
    with torch.no_grad():
        assert torch.allclose(module(x).double(), expected, atol=1e-5, rtol=1e-5)


def test_tied_unembedding_falls_back_to_the_embedding():
    """A tied checkpoint may store only the embedding."""
    model = tiny_model("gpt2")
    adapter = adapter_for(model.config)
    live = LiveParameters(model)

    class OnlyEmbedding:
        def __contains__(self, name):
            return name != "lm_head.weight"

        def get(self, name):
            return live.get(name)
    assert torch.equal(adapter.unembedding(OnlyEmbedding()), model.get_input_embeddings().weight.detach())


# ----------------------------------------------------------------------------------------------
# Planted heads on GPT-2: previous-token (0.1), duplicate-token (0.2), induction (1.3)

D, DH = 48, 12
PREV, DUP, IND = (0, 1), (0, 2), (1, 3)
PERIOD = 13  # positions are sinusoids of 2πk/13, k = 1..6: distinct up to 13 tokens apart


def _planted_gpt2() -> Session:
    """GPT-2 tiny, its first two layers rebuilt so that three heads do one thing each.

    The residual stream is split into orthonormal, zero-mean (LayerNorm-proof) subspaces: P
    holds the position (6 sinusoid pairs), T the token (a random unit vector per token), C a copy
    of the previous token. With equal norms everywhere LayerNorm scales every position alike.
    Previous-token head 0.1: q_t = position t−1 (each pair rotated back one step), k_s = position s,
    so q_t·k_s = Σ_k cos(ω_k (t−1−s)) is 6 at s = t−1 and −1/2 elsewhere; it writes T into C.
    Duplicate-token head 0.2: q = k = T (the same token scores 1, others ~±0.3).
    Induction head 1.3: q = T of the query, k = C (the key's previous token).
    """
    model = tiny_model("gpt2", vocab_size=len(WORDS))
    g = torch.Generator().manual_seed(5)
    basis = torch.randn(D, 36, generator=g, dtype=torch.float64)
    basis, _ = torch.linalg.qr(basis - basis.mean(0))  # orthonormal columns, each summing to zero
    P, T, C = basis[:, :12], basis[:, 12:24], basis[:, 24:36]
    omega = 2 * math.pi * torch.arange(1, 7, dtype=torch.float64) / PERIOD
    t = torch.arange(model.config.n_positions, dtype=torch.float64)[:, None]
    pairs = torch.stack([torch.cos(omega * t), torch.sin(omega * t)], -1).flatten(1)  # [positions, 12]
    tokens = torch.randn(len(WORDS), 12, generator=g, dtype=torch.float64)
    tokens = tokens / tokens.norm(dim=1, keepdim=True) * math.sqrt(6)  # same norm as a position
    rotate_back = torch.zeros(12, 12, dtype=torch.float64)  # maps the pairs of position t to those of t−1
    for k in range(6):
        c, s = math.cos(omega[k]), math.sin(omega[k])
        rotate_back[2 * k:2 * k + 2, 2 * k:2 * k + 2] = torch.tensor([[c, -s], [s, c]])

    def head_cols(which: int, head: int) -> slice:
        return slice(which * D + head * DH, which * D + (head + 1) * DH)

    with torch.no_grad():
        model.transformer.wpe.weight.copy_(pairs @ P.T)
        model.transformer.wte.weight.copy_(tokens @ T.T)
        for layer in (0, 1):
            block = model.transformer.h[layer]
            block.ln_1.weight.fill_(1.0)
            block.ln_1.bias.zero_()
        block0, block1 = model.transformer.h[0], model.transformer.h[1]
        block0.attn.c_proj.weight.zero_()  # layer 0 writes only what the previous-token head copies
        block0.attn.c_proj.bias.zero_()
        block0.mlp.c_proj.weight.zero_()
        block0.mlp.c_proj.bias.zero_()
        # x̃ = 2 x here (‖x‖ = √12 in 48 dims); scales chosen so each planted score gap is ≈ 20 logits.
        planted = [(block0, PREV[1], P @ rotate_back * 1.8, P * 1.8), (block0, DUP[1], T * 2.7, T * 2.7),
                   (block1, IND[1], T * 3.3, C * 3.3)]
        for block, head, w_q, w_k in planted:
            block.attn.c_attn.weight[:, head_cols(0, head)] = w_q.float()
            block.attn.c_attn.weight[:, head_cols(1, head)] = w_k.float()
            block.attn.c_attn.bias[head_cols(0, head)] = 0
            block.attn.c_attn.bias[head_cols(1, head)] = 0
        block0.attn.c_attn.weight[:, head_cols(2, PREV[1])] = T.float()
        block0.attn.c_attn.bias[head_cols(2, PREV[1])] = 0
        block0.attn.c_proj.weight[PREV[1] * DH:(PREV[1] + 1) * DH] = C.T.float()
    return Session(model, WORDS)


@pytest.fixture(scope="module")
def planted_roles():
    return repeated_roles(_planted_gpt2(), n_sequences=12, half_length=6, seed=0, batch_size=5)


def test_planted_previous_token_head_ranks_first(planted_roles):
    top = planted_roles["previous_token"].heads[0]
    assert (top.layer, top.head) == PREV and top.mean > 0.9
    assert top.low <= top.mean <= top.high and top.n == 12
    assert planted_roles["previous_token"].heads[1].mean < 0.5


def test_planted_previous_token_head_is_not_an_induction_head(planted_roles):
    induction = planted_roles["induction"]
    assert (induction.heads[0].layer, induction.heads[0].head) != PREV
    assert next(h for h in induction.heads if (h.layer, h.head) == PREV).mean < 0.05


def test_planted_duplicate_and_induction_heads_rank_first(planted_roles):
    duplicate, induction = planted_roles["duplicate_token"].heads[0], planted_roles["induction"].heads[0]
    assert (duplicate.layer, duplicate.head) == DUP and duplicate.mean > 0.4  # it splits with the query itself
    assert (induction.layer, induction.head) == IND and induction.mean > 0.7
    assert planted_roles["duplicate_token"].heads[1].mean < 0.3 and planted_roles["induction"].heads[1].mean < 0.3


def test_a_random_model_has_no_previous_token_head():
    """The planted test is sharp: the same GPT-2 tiny unplanted has nothing near 0.9."""
    roles = repeated_roles(Session(tiny_model("gpt2", vocab_size=len(WORDS)), WORDS), n_sequences=6, half_length=6)
    assert roles["previous_token"].heads[0].mean < 0.5


def _slow_repeated(session: Session, sequences) -> dict[str, torch.Tensor]:
    """One sequence at a time, full attention from output_attentions, positions looped by hand."""
    out = {r: torch.zeros(len(sequences), session.adapter.n_layers, session.adapter.n_heads)
           for r in ("previous_token", "duplicate_token", "induction")}
    for n, s in enumerate(sequences):
        with torch.no_grad():
            attentions = session.model(torch.tensor([s.ids]), output_attentions=True).attentions
        for layer, a in enumerate(attentions):
            for role, back in (("previous_token", 1), ("duplicate_token", s.half), ("induction", s.half - 1)):
                out[role][n, layer] = torch.stack([a[0, :, t, t - back] for t in s.second_half()]).mean(0)
    return out


@pytest.mark.parametrize("family", ["gpt2", "gemma3_text"])
def test_repeated_roles_equal_one_at_a_time(family):
    session = Session(tiny_model(family, vocab_size=len(WORDS)), WORDS)
    sequences = generate_repeated(WORDS, 5, 3, seed=2)  # short: Gemma's tiny sliding window is 4
    roles = repeated_roles(session, sequences=sequences, batch_size=2)
    slow = _slow_repeated(session, sequences)
    for role, values in slow.items():
        means = {(h.layer, h.head): h.mean for h in roles[role].heads}
        assert len(means) == values.shape[1] * values.shape[2]
        for (layer, head), mean in means.items():
            assert mean == pytest.approx(float(values[:, layer, head].mean()), abs=1e-6)
    assert roles["induction"].setup["seed"] is None  # given sequences, not generated


# ----------------------------------------------------------------------------------------------
# IOI and laundry: batched (length-sorted, left-padded, END row only) == one prompt at a time


def _slow_end_attention(session: Session, prompts, keys) -> torch.Tensor:
    values = []
    for prompt in prompts:
        m = mention_positions(WORDS, prompt)
        with torch.no_grad():
            attentions = session.model(torch.tensor([m.ids]), output_attentions=True).attentions
        values.append(torch.stack([a[0, :, -1, keys(m)].mean(-1) for a in attentions]))
    return torch.stack(values)  # [prompts, layers, heads]


def _assert_ranking_equals(ranking, slow: torch.Tensor) -> None:
    assert ranking.heads, ranking.role
    for h in ranking.heads:
        assert h.mean == pytest.approx(float(slow[:, h.layer, h.head].mean()), abs=1e-6), (ranking.role, h.name)
        assert h.n == slow.shape[0]
    means = [h.mean for h in ranking.heads]
    assert means == sorted(means, reverse=True)


@pytest.mark.pipeline
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_ioi_roles_equal_one_at_a_time(family):
    session = Session(tiny_model(family, vocab_size=len(WORDS)), WORDS)
    prompts = generate_ioi(WORDS, 9, seed=4)
    assert len({len(mention_positions(WORDS, p).ids) for p in prompts}) > 1  # padding is exercised
    roles = ioi_roles(session, prompts=prompts, batch_size=4)
    assert set(roles) == {"s_inhibition", "name_mover", "negative_mover", "copy"}
    _assert_ranking_equals(roles["s_inhibition"], _slow_end_attention(session, prompts, lambda m: m.repeated_second))
    io = _slow_end_attention(session, prompts, lambda m: [m.answer_first])
    _assert_ranking_equals(roles["name_mover"], io)
    _assert_ranking_equals(roles["negative_mover"], io)
    movers = {h.name for h in roles["name_mover"].heads}
    negative = {h.name for h in roles["negative_mover"].heads}
    assert not movers & negative and all(h.copy.mean > 0 for h in roles["name_mover"].heads)
    assert all(h.copy.mean < 0 for h in roles["negative_mover"].heads)
    assert roles["s_inhibition"].setup == {"task": "ioi", "prompts": 9, "skipped": 0, "seed": None}


def test_laundry_roles_equal_one_at_a_time():
    session = Session(tiny_model("gpt2", vocab_size=len(WORDS)), WORDS)
    prompts = generate_laundry(WORDS, [2, 4], 3, seed=1)
    roles = laundry_roles(session, prompts=prompts, batch_size=4)
    assert set(roles) == {"inhibition", "mover", "negative_mover", "copy"}
    _assert_ranking_equals(roles["inhibition"], _slow_end_attention(session, prompts, lambda m: m.repeated_second))
    _assert_ranking_equals(roles["mover"], _slow_end_attention(session, prompts, lambda m: [m.answer_first]))
    assert roles["inhibition"].setup["n_items"] == [2, 4]


def test_generated_prompts_and_skips():
    session = Session(tiny_model("llama", vocab_size=len(WORDS)), WORDS)
    roles = ioi_roles(session, n_prompts=4, seed=0)
    assert roles["s_inhibition"].setup == {"task": "ioi", "prompts": 4, "skipped": 0, "seed": 0}
    prompts = generate_ioi(WORDS, 4, seed=0)
    broken = TaskPrompt("ioi", prompts[0].prompt + " and" + prompts[0].answer + " said to", prompts[0].answer,
                        prompts[0].candidates, 2, prompts[0].answer_position)
    roles = ioi_roles(session, prompts=[broken, *prompts])
    assert roles["name_mover"].skipped == 1 and roles["name_mover"].heads[0].n == 4
    with pytest.raises(UserError, match="every ioi prompt was skipped"):
        ioi_roles(session, prompts=[broken])
    as_dict = roles["name_mover"].as_dict(top=2)
    assert len(as_dict["heads"]) == 2 and set(as_dict["heads"][0]) == {"layer", "head", "mean", "low", "high", "n", "copy"}
    assert "name_mover" in str(roles["name_mover"])


# ----------------------------------------------------------------------------------------------
# Copy scores


def _reference_copy(model, adapter, layer: int, head: int, ids: list[int]) -> list[float]:
    """Through the model's own modules (Llama layout): input norm, v_proj, the head's o_proj
    columns, Gemma's post-attention norm, final norm, lm_head; then z of each token's own logit."""
    attn = model.model.layers[layer].self_attn
    group = adapter.kv_group(head)
    with torch.no_grad():
        x = model.model.layers[layer].input_layernorm(model.model.embed_tokens.weight[ids])
        v = attn.v_proj(x)[:, group * adapter.d_head:(group + 1) * adapter.d_head]
        y = v @ attn.o_proj.weight[:, head * adapter.d_head:(head + 1) * adapter.d_head].T
        if adapter.output_norm(layer) is not None:
            y = model.model.layers[layer].post_attention_layernorm(y)
        logits = model.lm_head(model.model.norm(y))[:, ids].double()
    z = []
    for n in range(len(ids)):
        others = torch.cat([logits[n, :n], logits[n, n + 1:]])
        z.append(float((logits[n, n] - others.mean()) / others.std()))
    return z


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen3", "gemma3_text"])
def test_copy_scores_equal_the_model_modules(family):
    model = tiny_model(family)
    session = Session(model)
    ids = [3, 17, 29, 40, 41, 77, 90]
    scores = copy_scores(session, ids + ids[:2])  # duplicates count once
    for (layer, head), score in scores.items():
        z = _reference_copy(model, session.adapter, layer, head, ids)
        assert score.n == len(ids)
        assert score.mean == pytest.approx(sum(z) / len(z), rel=1e-4, abs=1e-4)


def _planted_copier(names: list[int]) -> Session:
    """Llama tiny with head 2.1's OV a projector onto an 8-dim subspace holding the names'
    embeddings (it copies), head 2.4's the negative projector (it suppresses); the unembedding
    is the embedding and the norm weights are ones."""
    model = tiny_model("llama", vocab_size=len(WORDS))
    adapter = adapter_for(model.config)
    dh = adapter.d_head
    g = torch.Generator().manual_seed(7)
    Q, _ = torch.linalg.qr(torch.randn(adapter.d_model, dh, generator=g))
    with torch.no_grad():
        embed = model.model.embed_tokens.weight
        embed[names] = torch.randn(len(names), dh, generator=g) @ Q.T
        model.lm_head.weight.copy_(embed)
        model.model.norm.weight.fill_(1.0)
        layer = model.model.layers[2]
        layer.input_layernorm.weight.fill_(1.0)
        for head, sign in ((1, 1.0), (4, -1.0)):
            group = adapter.kv_group(head)
            layer.self_attn.v_proj.weight[group * dh:(group + 1) * dh] = Q.T
            layer.self_attn.o_proj.weight[:, head * dh:(head + 1) * dh] = sign * Q
    return Session(model, WORDS)


def test_planted_copying_head_gets_the_top_copy_score():
    prompts = generate_ioi(WORDS, 12, seed=0)
    names = sorted({WORDS.convert_tokens_to_ids(c.strip()) for p in prompts for c in p.candidates})
    session = _planted_copier(names)
    scores = copy_scores(session, names)
    ranked = sorted(scores, key=lambda k: scores[k].mean)
    assert ranked[-1] == (2, 1) and scores[(2, 1)].mean > 1.5 and scores[(2, 1)].low > 0
    assert ranked[0] == (2, 4) and scores[(2, 4)].mean < -1.5
    others = [abs(s.mean) for k, s in scores.items() if k not in ((2, 1), (2, 4))]
    assert max(others) < scores[(2, 1)].mean / 2
    roles = ioi_roles(session, prompts=prompts)
    assert roles["copy"].heads[0].name == "2.1" and roles["copy"].heads[-1].name == "2.4"
    assert "2.1" in {h.name for h in roles["name_mover"].heads} and "2.4" not in {h.name for h in roles["name_mover"].heads}
    assert "2.4" in {h.name for h in roles["negative_mover"].heads}


def test_copy_scores_equal_the_model_modules_gpt2():
    """LayerNorm: the input's mean removal and the final norm's matter. Biases are zeroed (the
    copy score leaves them out by definition)."""
    model = tiny_model("gpt2")
    adapter = adapter_for(model.config)
    dh = adapter.d_head
    with torch.no_grad():
        for block in model.transformer.h:
            block.ln_1.bias.zero_()
            block.attn.c_attn.bias.zero_()
        model.transformer.ln_f.bias.zero_()
    ids = [3, 17, 29, 40, 41, 77, 90]
    scores = copy_scores(Session(model), ids)
    for layer, block in enumerate(model.transformer.h):
        with torch.no_grad():
            v = block.attn.c_attn(block.ln_1(model.transformer.wte.weight[ids]))[:, 2 * adapter.d_model:]
            for head in range(adapter.n_heads):
                y = v[:, head * dh:(head + 1) * dh] @ block.attn.c_proj.weight[head * dh:(head + 1) * dh]
                logits = model.lm_head(model.transformer.ln_f(y))[:, ids].double()
                z = [float((logits[n, n] - torch.cat([logits[n, :n], logits[n, n + 1:]]).mean())
                           / torch.cat([logits[n, :n], logits[n, n + 1:]]).std()) for n in range(len(ids))]
                assert scores[(layer, head)].mean == pytest.approx(sum(z) / len(z), rel=1e-4, abs=1e-4)


def test_copy_scores_need_three_tokens():
    with pytest.raises(UserError, match="at least 3 distinct"):
        copy_scores(Session(tiny_model("llama")), [5, 6, 5])
