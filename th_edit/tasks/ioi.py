"""Indirect object identification (Wang et al. 2022): "When Mary and John went to the store,
John gave a drink to" -> " Mary".

Each template names two people ({A}, {B}, in order of first mention), repeats the subject {S},
and stops right before the indirect object. ABBA puts the indirect object first (A = IO, S = B),
BABA puts the subject first (A = S, B = IO). Names are never the first word of a template, so
every mention is the same leading-space token as the answer.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from th_edit import ui
from th_edit.errors import UserError
from th_edit.tasks.laundry import is_single_token
from th_edit.tasks.prompts import TaskPrompt
from th_edit.tasks.registry import Task, register

ORDERS = ("ABBA", "BABA")

TEMPLATES: tuple[str, ...] = (
    "When {A} and {B} went to the store, {S} gave a drink to",
    "When {A} and {B} got a snack at the cafe, {S} decided to give it to",
    "After {A} and {B} went to the park, {S} handed a ball to",
    "While {A} and {B} were working at the office, {S} sent an email to",
    "Then, {A} and {B} had a long argument. Afterwards {S} said to",
    "Yesterday {A} and {B} went to a restaurant together. Later, {S} passed the menu to",
    "The friends {A} and {B} found a necklace at the beach. {S} gave it to",
    "After the meeting, {A} and {B} walked to the station, and {S} lent an umbrella to",
    "When {A} and {B} arrived at the party, {S} brought a gift for",
    "In the evening {A} and {B} were cooking dinner, and {S} handed a knife to",
    "At the library, {A} and {B} were studying together. {S} gave a book to",
    "The teacher asked {A} and {B} to tidy the room, and {S} passed the broom to",
    "When {A} and {B} visited the museum, {S} showed a painting to",
)

NAMES: tuple[str, ...] = (
    "Mary", "John", "Tom", "James", "Anna", "David", "Sarah", "Michael", "Emma", "Daniel",
    "Laura", "Paul", "Lisa", "Mark", "Kate", "Peter", "Alice", "Jack", "Rachel", "Steve",
    "Susan", "Robert", "Linda", "Chris", "Jessica", "Kevin", "Amy", "Brian", "Emily", "Ryan",
    "Grace", "Eric", "Helen", "Adam", "Julia", "Sam", "Jane", "Mike", "Sophie", "Ben",
    "Lucy", "George", "Anne", "Frank", "Ruth", "Henry", "Nancy", "Joe",
)


def usable_names(tokenizer) -> list[str]:
    """Names that are one token with their leading space, in list order."""
    return [n for n in NAMES if is_single_token(tokenizer, " " + n)]


def render(template_index: int, order: str, io: str, subject: str) -> TaskPrompt:
    first, second = (io, subject) if order == "ABBA" else (subject, io)
    text = TEMPLATES[template_index].format(A=first, B=second, S=subject)
    candidates = (" " + first, " " + second)
    position = 0 if order == "ABBA" else 1
    return TaskPrompt("ioi", text, " " + io, candidates, 2, position, f"t{template_index}-{order}")


def generate_ioi(tokenizer, n_prompts: int, seed: int, templates: Sequence[int] | None = None) -> list[TaskPrompt]:
    """`n_prompts` prompts with templates and ABBA/BABA orders balanced (counts differ by at most one).
    `templates` (indices into TEMPLATES) restricts the templates used, e.g. for a held-out split."""
    names = usable_names(tokenizer)
    if len(names) < 2:
        raise UserError("fewer than two IOI names are single tokens for this tokenizer")
    rng = random.Random(f"ioi:{seed}")
    orders = [ORDERS[i % 2] for i in range(n_prompts)]
    allowed = list(range(len(TEMPLATES))) if templates is None else list(dict.fromkeys(templates))
    if not allowed or any(not 0 <= t < len(TEMPLATES) for t in allowed):
        raise UserError(f"IOI templates must be indices in 0..{len(TEMPLATES) - 1}, got {list(templates or [])}")
    chosen = [allowed[i % len(allowed)] for i in range(n_prompts)]
    rng.shuffle(orders)
    rng.shuffle(chosen)
    prompts = []
    for order, template in zip(orders, chosen):
        io, subject = rng.sample(names, 2)
        prompts.append(render(template, order, io, subject))
    return prompts


# Tuning and held-out prompts of a search never share a template.
TUNING_TEMPLATES = tuple(range(0, 7))
HELD_OUT_TEMPLATES = tuple(range(7, len(TEMPLATES)))
_SPLIT = {None: None, "tuning": TUNING_TEMPLATES, "held_out": HELD_OUT_TEMPLATES}


def _announce(tokenizer, n_items: Sequence[int]) -> None:
    ui.debug(f"ioi: {len(usable_names(tokenizer))} of {len(NAMES)} names are single tokens")


IOI = register(Task(
    "ioi", "indirect object identification",
    generate=lambda tokenizer, n_items, n_prompts, seed, split: generate_ioi(tokenizer, n_prompts, seed, _SPLIT[split]),
    list_recall=False, fixed_n_items=2, position_names=ORDERS,  # the IO mentioned first is the ABBA order
    default=True, guard=True, announce=_announce,
    splits={"tuning": TUNING_TEMPLATES, "held_out": HELD_OUT_TEMPLATES},
    split_record={"tuning_ioi_templates": TUNING_TEMPLATES, "held_out_ioi_templates": HELD_OUT_TEMPLATES},
    role_names={"inhibition": "s_inhibition", "mover": "name_mover"},
))
