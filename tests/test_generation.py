"""Free-generation metrics and the side effects a user reads (issue 20): the named-item rule, the
chat template as transformers applies it, batched greedy decoding against a one-at-a-time
reference, planted answers counted right, greedy agreement and KL on the model's own replies."""

import pytest
import torch
from tiny import tiny_model, word_tokenizer

from th_edit import bench
from th_edit.bench.aggregate import paired_metric, summarize
from th_edit.bench.generation import chat_encoded, generation_examples, with_generation
from th_edit.bench.side_effects import kl_sum, user_visible
from th_edit.errors import UserError
from th_edit.runtime.generate import greedy_continuations
from th_edit.runtime.tokens import chat_prompt_ids, tokenize_prompts
from th_edit.session import Session, Variant
from th_edit.tasks.answers import chat_messages, first_named, named_kind
from th_edit.tasks.prompts import TaskPrompt
from th_edit.tasks.sets import build_prompts

pytestmark = pytest.mark.math

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer()


@pytest.fixture(scope="module")
def models(tokenizer):
    return tiny_model("llama", seed=0, vocab_size=len(tokenizer)), tiny_model("llama", seed=1, vocab_size=len(tokenizer))


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return build_prompts(tokenizer, ("laundry",), (3, 4), 6, seed=0)


# ----------------------------------------------------------------------------------------------
# The named-item rule (tasks.answers)

CANDIDATES = (" sock", " shirt", " cherry", " Mary", " box")


@pytest.mark.parametrize("text, named", [
    (" sock.", 0), ("The shirt, then the sock", 1), ("SOCKS", 0), ("Shirts and socks", 1), ("two cherries", 2),
    ("Mary's", 3), ("boxes", 4), ("a socket and a shirtless man", None), ("", None), ("nothing here", None),
])
def test_first_named_item(text, named):
    assert first_named(text, CANDIDATES) == named


@pytest.mark.parametrize("text, kind", [(" shirt", "answer"), ("Socks, then shirts", "other item"),
                                        ("I do not know", "no item"), ("the sockets", "no item")])
def test_what_a_text_names_first(text, kind):
    prompt = TaskPrompt("laundry", "I had a sock, a shirt, a box. Left:", " shirt", (" sock", " shirt", " box"), 3, 1)
    assert named_kind(text, prompt) == kind


def test_planted_generation_is_counted_right(tokenizer, prompts):
    """A stand-in model whose greedy continuation is planted: the answer (capitalized in chat) is
    right, another candidate named first is wrong, a text naming no item is wrong and counted apart,
    and the rows come back in prompt order."""
    tokenized = tokenize_prompts(tokenizer, prompts)
    chats = chat_encoded(tokenizer, prompts)
    kinds = ["other item" if i % 3 == 0 else "no item" if i % 4 == 1 else "answer" for i in range(len(prompts))]

    def reply(i: int, chat: bool) -> list[int]:
        p = prompts[i]
        said = p.candidates[(p.answer_position + 1) % p.n_items] if kinds[i] == "other item" else p.answer
        words = (" the end" if kinds[i] == "no item" else f"the{said}") if not chat else \
            ("It is gone ." if kinds[i] == "no item" else f"It is the{said} .")
        return tokenizer.encode(" " + words if not chat else words, add_special_tokens=False)

    planted = {tuple(ids): reply(i, False) for i, ids in enumerate(tokenized.encoded)}
    planted |= {tuple(ids): reply(i, True) for i, ids in enumerate(chats)}

    class Planted(torch.nn.Module):
        generation_config = None

        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(len(tokenizer), 2)

        def get_input_embeddings(self):
            return self.embed

        def generate(self, input_ids, attention_mask, max_new_tokens, pad_token_id, **_):
            rows = [planted[tuple(ids[mask.bool()].tolist())][:max_new_tokens] for ids, mask in zip(input_ids, attention_mask)]
            width = max(map(len, rows))
            new = torch.tensor([r + [pad_token_id] * (width - len(r)) for r in rows])
            return torch.cat([input_ids, new], dim=1)

    scores = bench.score_prompts(tiny_model("llama", vocab_size=len(tokenizer)), tokenizer, prompts, 4, tokenized)
    scored = with_generation(Planted(), tokenizer, prompts, scores, batch_size=4, tokenized=tokenized)
    expected = [kind == "answer" for kind in kinds]
    assert [s.generation_correct for s in scored] == expected
    assert [s.chat_correct for s in scored] == expected
    assert [s.generation_named for s in scored] == [s.chat_named for s in scored] == kinds
    assert all(s.chat_text.startswith("It is") for s in scored)
    row = summarize(prompts, scored)["laundry"]["overall"]
    assert row["generation_accuracy"] == row["chat_accuracy"] == sum(expected) / len(prompts)
    counts = {kind: kinds.count(kind) for kind in ("answer", "other item", "no item")}
    assert row["generation_named"] == row["chat_named"] == counts and min(counts.values()) > 0
    examples = generation_examples(prompts, {"model": scored})  # the first prompt of each N
    assert [(e["n_items"], e["prompt"]) for e in examples] == [(3, prompts[0].prompt), (4, prompts[6].prompt)]
    assert examples[1]["model"]["chat"] == scored[6].chat_text and examples[1]["model"]["chat_names"] == kinds[6]


# ----------------------------------------------------------------------------------------------
# The chat template and greedy decoding (runtime)


def test_chat_prompt_is_the_transformers_template(tokenizer):
    chatml = word_tokenizer()
    chatml.chat_template = CHATML
    messages = chat_messages(TaskPrompt("laundry", "I washed the sock and the shirt , so the", " shirt",
                                        (" sock", " shirt"), 2, 1))
    for tok in (tokenizer, chatml):
        expected = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        assert chat_prompt_ids(tok, messages) == list(expected)
        rendered = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert chat_prompt_ids(tok, messages) == tok(rendered, add_special_tokens=False)["input_ids"]
    assert "assistant" in chatml.decode(chat_prompt_ids(chatml, messages)[-3:])
    bare = word_tokenizer()
    bare.chat_template = None
    with pytest.raises(UserError, match="no chat template"):
        chat_prompt_ids(bare, messages)


def test_batched_greedy_matches_one_at_a_time(tokenizer, models, prompts):
    model = models[0]
    sequences = tokenize_prompts(tokenizer, prompts).encoded + chat_encoded(tokenizer, prompts[:3])
    batched = greedy_continuations(model, tokenizer, sequences, 5, batch_size=4, pad_id=tokenizer.pad_token_id)
    for ids, got in zip(sequences, batched):
        reference = list(ids)
        with torch.no_grad():
            for _ in range(5):  # full forward passes, no cache, no padding
                reference.append(int(model(input_ids=torch.tensor([reference])).logits[0, -1].argmax()))
                if reference[-1] == tokenizer.eos_token_id:
                    break
        assert got == reference[len(ids):]


# ----------------------------------------------------------------------------------------------
# Paired metrics and side effects


def test_paired_metric_counts():
    row = paired_metric([True, True, False, False, False], [True, False, True, True, False])
    assert (row["b_right_to_wrong"], row["c_wrong_to_right"]) == (1, 2)
    assert row["accuracy_change"] == pytest.approx(0.2) and row["before_accuracy"] == pytest.approx(0.4)


def test_reply_kl_counts_only_the_last_positions(tokenizer, models):
    before, after = (Variant(m) for m in models)
    sequences = [tokenizer.encode("the sock is red and blue", add_special_tokens=True),
                 tokenizer.encode("my hat", add_special_tokens=True)]
    last = [3, 1]
    per_position: list[torch.Tensor] = []
    total, count = kl_sum(before.forward, after.forward, tokenizer, None, 2, encoded=sequences,
                          per_position=per_position, last_positions=last)
    expected = []
    with torch.no_grad():
        for ids, k in zip(sequences, last):
            p = torch.log_softmax(models[0](input_ids=torch.tensor([ids])).logits[0, -k:].double(), -1)
            q = torch.log_softmax(models[1](input_ids=torch.tensor([ids])).logits[0, -k:].double(), -1)
            expected += (p.exp() * (p - q)).sum(-1).tolist()
    assert count == 4 and total == pytest.approx(sum(expected), rel=1e-5)
    assert sorted(torch.cat(per_position).tolist()) == pytest.approx(sorted(expected), rel=1e-5)


def test_user_visible_side_effects(tokenizer, models):
    same = user_visible(Variant(models[0]), Variant(models[0]), tokenizer, batch_size=8, limit=6)
    assert {k: a["share"] for k, a in same["greedy_agreement"].items()} == {"completion": 1.0, "chat": 1.0}
    assert same["chat_reply_kl"]["max_nats"] == pytest.approx(0.0, abs=1e-9)
    other = user_visible(Variant(models[0]), Variant(models[1]), tokenizer, batch_size=8, limit=6)
    assert other["chat_reply_kl"]["mean_nats_per_token"] > 0 and other["chat_reply_kl"]["n_replies"] == 6
    assert other["chat_reply_kl"]["p95_nats"] <= other["chat_reply_kl"]["max_nats"]


def test_paired_report_with_generation(tokenizer, models):
    session = Session(models[0], tokenizer, reference="tiny")
    report = bench.paired(session, Session(models[1], tokenizer, reference="other"), tasks=("laundry",), n_items=(3,),
                          n_prompts=6, kl_texts=8, generation=True)
    metrics = report["paired"]["laundry"]["overall"]["metrics"]
    assert set(metrics) == {"top1", "generation", "chat"}
    kl = report["side_effects"]["neutral_kl"]
    assert kl["p95_nats"] <= kl["max_nats"] and kl["mean_nats_per_token"] <= kl["max_nats"]
    assert sum(metrics["chat"]["after_named"].values()) == report["paired"]["laundry"]["overall"]["n"]
    assert [e["n_items"] for e in report["examples"]] == [3] and {"before", "after"} <= set(report["examples"][0])
    text = str(report)
    assert "generation" in text and "greedy tokens unchanged" in text and "own chat replies" in text
    assert "names first (%: answer/other item/no item)" in text


def test_a_family_without_a_template_uses_its_published_turn_format():
    """A Gemma 3 tokenizer carrying no template: the family's published turns (arch), applied by
    transformers' own apply_chat_template; a family that publishes none is refused in one line."""
    from th_edit.arch import published_chat_template

    tok = word_tokenizer()
    tok.chat_template = None
    tok.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    gemma = tiny_model("gemma3_text", vocab_size=len(tok))
    messages = [{"role": "user", "content": "the sock"}]
    template = published_chat_template("gemma3_text")
    expected = tok.apply_chat_template(messages, chat_template=template, add_generation_prompt=True, tokenize=True,
                                       return_dict=False)
    ids = chat_prompt_ids(tok, messages, gemma)
    assert ids == list(expected)
    rendered = tok.apply_chat_template(messages, chat_template=template, add_generation_prompt=True, tokenize=False)
    assert rendered == "[BOS]<start_of_turn>user\nthe sock<end_of_turn>\n<start_of_turn>model\n"
    with pytest.raises(UserError, match="no chat template"):
        chat_prompt_ids(tok, messages, tiny_model("llama", vocab_size=len(tok)))
