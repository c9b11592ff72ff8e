"""Prompt sets: laundry-list and IOI generation, neutral text, and the JSONL format."""

import json
import re
from collections import Counter

import pytest

from th_edit.errors import UserError
from th_edit.models import load_tokenizer, resolve
from th_edit.tasks.ioi import NAMES, TEMPLATES, generate_ioi, usable_names
from th_edit.tasks.laundry import (
    FRAMES,
    Frame,
    article,
    frames_left_out,
    generate_laundry,
    is_single_token,
    join_list,
    lexicon_survival,
    usable_items,
)
from th_edit.tasks.neutral import neutral_prompts
from th_edit.tasks.prompts import TaskPrompt, read_jsonl, write_jsonl

FRAMES_BY_NAME = {f.name: f for f in FRAMES}


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(resolve("smollm2-135m"))


def _mentions(word: str, text: str) -> int:
    return len(re.findall(rf"\b{re.escape(word)}\b", text))


# ----------------------------------------------------------------------------------------------
# Laundry


def test_frames_and_lexicons_are_large_enough():
    assert len(FRAMES) >= 6
    assert len({f.name for f in FRAMES}) == len(FRAMES)
    for frame in FRAMES:
        assert len(frame.lexicon) >= 40, frame.name
        assert len(set(frame.lexicon)) == len(frame.lexicon), frame.name
        # A lexicon word inside the frame's own text would be "mentioned again" by the frame itself.
        assert not [w for w in frame.lexicon if _mentions(w, frame.text)], frame.name
        assert frame.text == frame.text.rstrip() and "{first}" in frame.text and "{handled}" in frame.text


def test_single_token_filter(tok):
    frame = Frame("test", "{first} {handled} the", "the", "the", ("shirt", "pillowcase", "towel"))
    assert len(tok.encode(" pillowcase", add_special_tokens=False)) > 1  # the premise of this test
    assert usable_items(tok, frame) == ["shirt", "towel"]
    for frame in FRAMES:
        for word in usable_items(tok, frame):
            assert len(tok.encode(" " + word, add_special_tokens=False)) == 1
    survival = lexicon_survival(tok)
    assert set(survival) == set(FRAMES_BY_NAME)
    assert all(0 < usable <= total for usable, total in survival.values())


def test_articles_and_lists():
    assert [article(w) for w in ("shirt", "apple", "umbrella", "uniform", "hour")] == ["a", "an", "an", "a", "an"]
    assert join_list(["a"]) == "a"
    assert join_list(["a", "b"]) == "a and b"
    assert join_list(["a", "b", "c"]) == "a, b and c"


def test_every_n_from_2_to_10_works(tok):
    prompts = generate_laundry(tok, range(2, 11), 12, seed=0)
    assert Counter(p.n_items for p in prompts) == {n: 12 for n in range(2, 11)}
    for p in prompts:
        _check_laundry_prompt(tok, p)


def _check_laundry_prompt(tok, p: TaskPrompt) -> None:
    frame = FRAMES_BY_NAME[p.template]
    assert p.task == "laundry" and len(p.candidates) == p.n_items == len(set(p.candidates))
    assert p.candidates[p.answer_position] == p.answer
    assert not p.prompt.endswith(" ") and all(c.startswith(" ") for c in p.candidates)
    assert all(is_single_token(tok, c) for c in p.candidates)
    # mentions beyond those in the frame's own text: the answer once (the first list), the others twice
    for candidate in p.candidates:
        word = candidate.strip()
        extra = _mentions(word, p.prompt) - _mentions(word, frame.text)
        assert extra == (1 if candidate == p.answer else 2), (word, p.prompt)
    # the first list names the items in candidate order, and the answer is not mentioned after it
    firsts = [re.search(rf"\b{re.escape(c.strip())}\b", p.prompt).start() for c in p.candidates]
    assert firsts == sorted(firsts)
    assert _mentions(p.answer.strip(), p.prompt[max(firsts) + 1:]) == 0


def test_answer_is_never_handled_and_prompt_stops_before_it(tok):
    for p in generate_laundry(tok, [2, 5, 9], 20, seed=3):
        frame = FRAMES_BY_NAME[p.template]
        before_handled = frame.text.split("{handled}")[0].split("{first}")[1]
        handled_part = p.prompt.split(before_handled, 1)[1]
        assert _mentions(p.answer.strip(), handled_part) == 0
        assert (p.prompt + p.answer).endswith(frame.text.split("{handled}")[1] + p.answer)


def test_determinism(tok):
    assert generate_laundry(tok, [2, 3, 7], 15, seed=0) == generate_laundry(tok, [2, 3, 7], 15, seed=0)
    assert generate_laundry(tok, [3], 15, seed=0) != generate_laundry(tok, [3], 15, seed=1)
    # each N has its own generator: N=7 does not depend on which other N were asked for
    alone = generate_laundry(tok, [7], 15, seed=0)
    together = [p for p in generate_laundry(tok, [2, 7], 15, seed=0) if p.n_items == 7]
    assert alone == together


def test_a_repeated_n_is_generated_once(tok):
    # Each N has its own seed, so a repeat would add identical prompts and count them twice.
    assert generate_laundry(tok, [2, 2, 3, 2], 5, seed=0) == generate_laundry(tok, [2, 3], 5, seed=0)


def test_frames_left_out_for_large_n():
    counts = {"laundry": 9, "shopping": 4, "packing": 2}
    assert frames_left_out(counts, [2, 3, 5, 3]) == {"shopping": [5], "packing": [3, 5]}
    assert frames_left_out(counts, [2]) == {}


def test_positions_and_frames_are_balanced(tok):
    for n in range(2, 11):
        prompts = generate_laundry(tok, [n], 37, seed=5)
        positions = Counter(p.answer_position for p in prompts)
        assert set(positions) == set(range(n))
        assert max(positions.values()) - min(positions.values()) <= 1
        frames = Counter(p.template for p in prompts)
        eligible = [f for f in FRAMES if len(usable_items(tok, f)) >= n]
        assert set(frames) == {f.name for f in eligible} and max(frames.values()) - min(frames.values()) <= 1


class _CharTokenizer:
    """Every character is a token, so no lexicon word survives."""

    def encode(self, text, add_special_tokens=False):
        return [ord(c) for c in text]


def test_no_usable_frame_is_a_clear_error(tok):
    with pytest.raises(UserError, match="no laundry frame has 2 items"):
        generate_laundry(_CharTokenizer(), [2], 5, seed=0)
    with pytest.raises(UserError, match="2 to 10"):
        generate_laundry(tok, [11], 5, seed=0)


# ----------------------------------------------------------------------------------------------
# IOI


def test_ioi_templates_and_names():
    assert len(TEMPLATES) >= 10 and len(set(TEMPLATES)) == len(TEMPLATES)
    assert len(NAMES) >= 40 and len(set(NAMES)) == len(NAMES)
    for template in TEMPLATES:
        assert template.index("{A}") < template.index("{B}") < template.index("{S}")
        assert not template.startswith("{") and template == template.rstrip()


def test_ioi_prompts(tok):
    prompts = generate_ioi(tok, 52, seed=0)
    assert prompts == generate_ioi(tok, 52, seed=0)
    assert prompts != generate_ioi(tok, 52, seed=1)
    orders = Counter(p.template.split("-")[1] for p in prompts)
    assert orders == {"ABBA": 26, "BABA": 26}
    assert {int(p.template.split("-")[0][1:]) for p in prompts} == set(range(len(TEMPLATES)))
    usable = set(usable_names(tok))
    for p in prompts:
        io, subject = p.answer.strip(), next(c for c in p.candidates if c != p.answer).strip()
        assert {io, subject} <= usable and p.n_items == 2
        assert p.candidates[p.answer_position] == p.answer
        # candidates in order of first mention; ABBA puts the indirect object first
        assert p.prompt.index(p.candidates[0]) < p.prompt.index(p.candidates[1])
        assert p.answer_position == (0 if p.template.endswith("ABBA") else 1)
        assert _mentions(io, p.prompt) == 1 and _mentions(subject, p.prompt) == 2
        assert not p.prompt.endswith(" ")


# ----------------------------------------------------------------------------------------------
# Neutral text


def test_neutral_prompts():
    texts = neutral_prompts()
    assert len(texts) >= 100
    assert len(set(texts)) == len(texts)
    assert all(3 <= len(t.split()) <= 40 for t in texts)


# ----------------------------------------------------------------------------------------------
# JSONL


def test_jsonl_round_trip(tok, tmp_path):
    prompts = generate_laundry(tok, [2, 4], 3, seed=0) + generate_ioi(tok, 3, seed=0)
    prompts.append(TaskPrompt("laundry", "Pick one of", " x", (" y", " x"), 2, 1))  # no template
    path = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, path)
    assert read_jsonl(path) == prompts
    assert "template" not in json.loads(path.read_text().splitlines()[-1])


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85"])
def test_jsonl_keeps_unicode_line_separators_inside_strings(tmp_path, separator):
    # write_jsonl leaves these raw (ensure_ascii=False); str.splitlines() would split records on them.
    prompt = TaskPrompt("laundry", f"Pick{separator}one of", " x", (" y", " x"), 2, 1)
    path = tmp_path / "prompts.jsonl"
    write_jsonl([prompt, prompt], path)
    assert separator in path.read_text(encoding="utf-8")
    assert read_jsonl(path) == [prompt, prompt]
    with path.open("a", encoding="utf-8") as file:
        file.write("{not json\n")
    with pytest.raises(UserError, match=r"line 3: invalid JSON"):
        read_jsonl(path)


def test_jsonl_crlf_blank_lines_and_line_numbers(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(("\r\n" + _line() + "\r\n\r\n" + _line(answer=" shirt", answer_position=1) + "\r\n").encode())
    prompts = read_jsonl(path)
    assert [p.answer for p in prompts] == [" sock", " shirt"]
    assert [p.line for p in prompts] == [2, 4]
    # the line number is bookkeeping, not part of the prompt
    write_jsonl(prompts, tmp_path / "again.jsonl")
    assert all("line" not in json.loads(r) for r in (tmp_path / "again.jsonl").read_text().splitlines())
    assert prompts[0] == TaskPrompt("laundry", "I washed the", " sock", (" sock", " shirt"), 2, 0)


GOOD = {"task": "laundry", "prompt": "I washed the", "answer": " sock",
        "candidates": [" sock", " shirt"], "n_items": 2, "answer_position": 0}


def _line(**changes) -> str:
    record = {**GOOD, **changes}
    return json.dumps({k: v for k, v in record.items() if v is not ...})


@pytest.mark.parametrize("bad_line, message", [
    ("{not json", "invalid JSON"),
    ("[1, 2]", "expected a JSON object"),
    (_line(answer=...), "missing key 'answer'"),
    (_line(extra=1), "unknown key 'extra'"),
    (_line(n_items="2"), "'n_items' must be an integer"),
    (_line(answer_position=True), "'answer_position' must be an integer"),
    (_line(candidates=" sock"), "'candidates' must be a list of strings"),
    (_line(prompt=3), "'prompt' must be a string"),
    (_line(template=4), "'template' must be a string or null"),
    (_line(task="sorting"), "'task' must be one of 'laundry', 'ioi'"),
    (_line(answer=" towel"), "'answer' is not one of 'candidates'"),
    (_line(candidates=[" sock", " sock"]), "'candidates' contains duplicates"),
    (_line(n_items=3), "'candidates' has 2 items but 'n_items' is 3"),
    (_line(answer_position=2), "'answer_position' must be in 0..1, not 2"),
    (_line(prompt="I washed the "), "ends with whitespace"),
    (_line(task="ioi", candidates=[" a", " b", " sock"], n_items=3), "must be 2 for the ioi task"),
])
def test_jsonl_errors_name_file_and_line(tmp_path, bad_line, message):
    path = tmp_path / "prompts.jsonl"
    path.write_text(_line() + "\n" + _line() + "\n" + bad_line + "\n")
    with pytest.raises(UserError) as caught:
        read_jsonl(path)
    text = str(caught.value)
    assert text.startswith(f"{path} line 3: ") and message in text
    assert "\n" not in text


def test_jsonl_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(UserError, match="contains no prompts"):
        read_jsonl(empty)
    with pytest.raises(UserError, match="no such file"):
        read_jsonl(tmp_path / "missing.jsonl")


@pytest.mark.real
def test_every_n_from_2_to_10_works_for_gemma():
    gemma = load_tokenizer(resolve("gemma-3-270m"))
    for p in generate_laundry(gemma, range(2, 11), 4, seed=0) + generate_ioi(gemma, 10, seed=0):
        assert all(is_single_token(gemma, c) for c in p.candidates)
