"""The laundry-list task: recall the one item of a list that was not mentioned again.

A frame introduces N distinct items, mentions N-1 of them again (shuffled) as handled, and stops
right before the remaining item. Every item must be a single token *with its leading space* for
the tokenizer at hand, so each frame's lexicon is filtered per tokenizer.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from th_edit import ui
from th_edit.errors import UserError
from th_edit.tasks.prompts import TaskPrompt
from th_edit.tasks.registry import Task, register

MIN_ITEMS, MAX_ITEMS = 2, 10

# Determiners a frame can put before its items. "a" means a/an chosen by sound.
DETERMINERS = ("a", "the", "my")

# The simple vowel-letter rule gets these wrong; keep them in one place instead of banning words.
_AN_BEFORE_CONSONANT_LETTER = {"hour", "heir", "honor"}
_A_BEFORE_VOWEL_LETTER = {"uniform", "unicorn", "ukulele", "utensil", "eucalyptus"}


@dataclass(frozen=True)
class Frame:
    """A story with two slots; `text` ends right before the answer (no trailing space)."""

    name: str
    text: str  # contains {first} (all N items) and {handled} (the N-1 handled ones)
    first_determiner: str
    handled_determiner: str
    lexicon: tuple[str, ...]


def article(word: str) -> str:
    if word in _AN_BEFORE_CONSONANT_LETTER:
        return "an"
    if word in _A_BEFORE_VOWEL_LETTER:
        return "a"
    return "an" if word[0] in "aeiou" else "a"


def _with_determiner(word: str, determiner: str) -> str:
    if not determiner:  # names: "Mary", not "the Mary"
        return word
    return f"{article(word) if determiner == 'a' else determiner} {word}"


def join_list(phrases: Sequence[str]) -> str:
    """'x', 'x and y', 'x, y and z' (no serial comma, as in the example of docs/method.md#tasks)."""
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


FRAMES: tuple[Frame, ...] = (
    Frame(
        "laundry",
        "I took a load to the laundromat with {first}. I washed {handled}, so the last thing left to wash was the",
        "a", "the",
        ("shirt", "sock", "towel", "jacket", "sweater", "dress", "skirt", "blanket", "scarf", "glove",
         "hat", "coat", "vest", "hoodie", "robe", "apron", "sheet", "pillowcase", "quilt", "duvet",
         "cardigan", "blouse", "tunic", "jersey", "bathrobe", "nightgown", "swimsuit", "bikini",
         "tablecloth", "napkin", "curtain", "rug", "cushion", "handkerchief", "bandana", "beanie",
         "cap", "mitten", "poncho", "kimono", "shawl", "sweatshirt", "raincoat", "bib", "suit",
         "uniform", "pillow", "mat", "backpack", "tie", "diaper", "rag", "flag", "bra", "stocking",
         "ribbon", "purse", "tent", "cloth"),
    ),
    Frame(
        "shopping",
        "At the market I put {first} in my basket. At the checkout I paid for {handled}, "
        "and then I noticed that I had not paid for the",
        "a", "the",
        ("apple", "banana", "lemon", "onion", "carrot", "potato", "tomato", "melon", "mango", "peach",
         "pear", "cabbage", "cucumber", "pepper", "pumpkin", "pineapple", "orange", "avocado", "egg",
         "loaf", "baguette", "cake", "pie", "pizza", "sandwich", "muffin", "cookie", "candle", "mug",
         "sponge", "toothbrush", "notebook", "pen", "pencil", "battery", "magazine", "newspaper",
         "bottle", "jar", "lime", "coconut", "grapefruit", "kiwi", "croissant", "donut", "bagel",
         "kettle", "chicken", "broom", "bucket", "lamp", "plate", "bowl", "cup", "toaster"),
    ),
    Frame(
        "packing",
        "Before the trip I laid out {first} on the bed. I packed {handled} into my suitcase, "
        "so the one thing still left to pack was the",
        "a", "the",
        ("passport", "camera", "charger", "laptop", "phone", "wallet", "book", "map", "umbrella",
         "toothbrush", "towel", "sweater", "jacket", "hat", "razor", "comb", "brush", "mirror",
         "pillow", "blanket", "flashlight", "ticket", "key", "watch", "ring", "necklace", "bracelet",
         "notebook", "pen", "guidebook", "tablet", "headset", "adapter", "bottle", "thermos", "scarf",
         "belt", "sandal", "boot", "swimsuit", "tie", "perfume", "diary", "compass", "raincoat",
         "hairdryer", "kindle", "novel", "journal", "lantern"),
    ),
    Frame(
        "cleaning",
        "On Saturday I had to clean {first}. I cleaned {handled} in the morning, "
        "so in the afternoon I still had to clean the",
        "the", "the",
        ("kitchen", "bathroom", "bedroom", "garage", "attic", "basement", "hallway", "porch", "balcony",
         "window", "mirror", "floor", "carpet", "rug", "oven", "fridge", "sink", "bathtub", "shower",
         "toilet", "stove", "table", "desk", "shelf", "cabinet", "closet", "wardrobe", "counter",
         "microwave", "dishwasher", "couch", "sofa", "chair", "bench", "staircase", "fireplace",
         "patio", "driveway", "gate", "fence", "door", "cupboard", "drawer", "pantry", "terrace",
         "car", "bike", "freezer", "grill", "aquarium"),
    ),
    Frame(
        "cooking",
        "For the stew I set out {first} on the counter. I had already chopped {handled}, "
        "so the last ingredient left to chop was the",
        "the", "the",
        ("onion", "carrot", "potato", "tomato", "pepper", "garlic", "celery", "leek", "cabbage",
         "zucchini", "eggplant", "mushroom", "turnip", "parsnip", "radish", "beet", "squash",
         "pumpkin", "cucumber", "lettuce", "chicken", "beef", "pork", "lamb", "fish", "salmon",
         "shrimp", "ham", "sausage", "bacon", "apple", "pear", "lemon", "lime", "orange", "mango",
         "pineapple", "avocado", "ginger", "chili", "basil", "parsley", "cilantro", "fennel",
         "artichoke", "asparagus", "broccoli", "cauliflower", "kale", "olive", "plum", "peach"),
    ),
    Frame(
        "gardening",
        "In the spring I bought {first} at the garden center. I planted {handled} on Saturday, "
        "so on Sunday I still had to plant the",
        "a", "the",
        ("rose", "tulip", "lily", "daisy", "orchid", "sunflower", "fern", "cactus", "oak", "maple",
         "pine", "birch", "willow", "cedar", "palm", "cherry", "lemon", "peach", "plum", "fig", "olive",
         "magnolia", "hibiscus", "jasmine", "peony", "dahlia", "poppy", "iris", "lilac", "violet",
         "marigold", "geranium", "begonia", "petunia", "azalea", "hydrangea", "carnation", "daffodil",
         "tomato", "apricot", "shrub", "hedge", "vine", "bush", "seedling", "elm", "spruce", "fir",
         "poplar", "cypress", "juniper", "holly", "chestnut", "walnut", "beech", "aspen", "redwood"),
    ),
    Frame(
        "tools",
        "My neighbor borrowed {first} from the garage. He has returned {handled}, "
        "but he still has not returned my",
        "my", "my",
        ("hammer", "drill", "saw", "wrench", "screwdriver", "ladder", "shovel", "rake", "hose",
         "mower", "axe", "chisel", "clamp", "file", "level", "tape", "stapler", "sander", "pliers",
         "toolbox", "wheelbarrow", "bucket", "broom", "trowel", "hoe", "spade", "crowbar", "mallet",
         "vise", "grinder", "jack", "pump", "generator", "compressor", "router", "jigsaw", "lathe",
         "trimmer", "blower", "sprinkler", "chainsaw", "flashlight", "tent", "canoe", "kayak", "grill",
         "bike", "scooter", "trailer", "projector", "speaker", "guitar"),
    ),
)


# ----------------------------------------------------------------------------------------------
# Tokenizer filtering


def is_single_token(tokenizer, text: str) -> bool:
    return len(tokenizer.encode(text, add_special_tokens=False)) == 1


def usable_items(tokenizer, frame: Frame) -> list[str]:
    """The frame's lexicon words that are one token with their leading space, in lexicon order."""
    return [w for w in frame.lexicon if is_single_token(tokenizer, " " + w)]


def lexicon_survival(tokenizer, frames: Sequence[Frame] = FRAMES) -> dict[str, tuple[int, int]]:
    """Per frame: (usable items for this tokenizer, lexicon size)."""
    return {f.name: (len(usable_items(tokenizer, f)), len(f.lexicon)) for f in frames}


def _frames_for(n: int, usable_counts: dict[str, int], frames: Sequence[Frame] = FRAMES) -> list[Frame]:
    """The frames that can make an N-item list: those with at least N usable items."""
    return [f for f in frames if usable_counts[f.name] >= n]


def _chosen_frames(names: Sequence[str] | None, catalog: Sequence[Frame] = FRAMES, task: str = "laundry") -> list[Frame]:
    if names is None:
        return list(catalog)
    known = {f.name: f for f in catalog}
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise UserError(f"unknown {task} frame(s) {', '.join(unknown) or '(none given)'}; frames: {', '.join(known)}")
    return [known[n] for n in dict.fromkeys(names)]


def frames_left_out(usable_counts: dict[str, int], n_items: Sequence[int]) -> dict[str, list[int]]:
    """Per frame with too few usable items for some of `n_items`: those N (ascending). Lists of
    such an N rotate over the other frames only."""
    # The complement of _frames_for: a frame with fewer usable items than N is skipped for N.
    left_out = {name: [n for n in sorted(set(n_items)) if count < n] for name, count in usable_counts.items()}
    return {name: ns for name, ns in left_out.items() if ns}


# ----------------------------------------------------------------------------------------------
# Generation


def render(frame: Frame, items: Sequence[str], answer_position: int, handled_order: Sequence[int],
           task: str = "laundry") -> TaskPrompt:
    """The prompt for `items` (in first-mention order) whose item `answer_position` is never handled."""
    if answer_position in handled_order:
        raise ValueError("the answer cannot be among the handled items")
    first = join_list([_with_determiner(w, frame.first_determiner) for w in items])
    handled = join_list([_with_determiner(items[i], frame.handled_determiner) for i in handled_order])
    text = frame.text.format(first=first, handled=handled)
    candidates = tuple(" " + w for w in items)
    return TaskPrompt(task, text, candidates[answer_position], candidates, len(items),
                      answer_position, frame.name)


def balanced_positions(n: int, count: int, rng: random.Random) -> list[int]:
    """`count` answer positions in 0..n-1 whose counts differ by at most one, in random order."""
    positions = [i % n for i in range(count)]
    rng.shuffle(positions)
    return positions


def generate_laundry(tokenizer, n_items: Sequence[int], n_per_n: int, seed: int,
                     frames: Sequence[str] | None = None) -> list[TaskPrompt]:
    """`n_per_n` prompts for every N in `n_items`, answer positions and frames balanced.

    `frames` (names) restricts the frames used, e.g. to keep a held-out set's frames apart from
    those a search tunes on.

    Each N draws from its own generator seeded by (seed, N), so the prompts for N=5 are the same
    whether or not other N are requested alongside. A repeated N is generated once: a second
    pass would repeat the same prompts and count them twice in the statistics.
    """
    return generate_lists("laundry", FRAMES, tokenizer, n_items, n_per_n, seed, frames)


def generate_lists(task: str, catalog: Sequence[Frame], tokenizer, n_items: Sequence[int], n_per_n: int, seed: int,
                   frames: Sequence[str] | None = None) -> list[TaskPrompt]:
    """generate_laundry for any list-recall task: its name and its frames (`catalog`)."""
    chosen = _chosen_frames(frames, catalog, task)
    usable = {f.name: usable_items(tokenizer, f) for f in chosen}
    counts = {name: len(items) for name, items in usable.items()}
    prompts: list[TaskPrompt] = []
    for n in dict.fromkeys(n_items):  # distinct, in the order given
        if not MIN_ITEMS <= n <= MAX_ITEMS:
            raise UserError(f"{task} lists need {MIN_ITEMS} to {MAX_ITEMS} items, not {n}")
        frames = _frames_for(n, counts, chosen)
        if not frames:
            best = max(len(items) for items in usable.values())
            raise UserError(
                f"no {task} frame has {n} items that are single tokens for this tokenizer (the best has {best})"
            )
        rng = random.Random(f"{task}:{seed}:{n}")
        positions = balanced_positions(n, n_per_n, rng)
        frame_order = [frames[i % len(frames)] for i in range(n_per_n)]
        rng.shuffle(frame_order)
        for position, frame in zip(positions, frame_order):
            items = rng.sample(usable[frame.name], n)
            handled = [i for i in range(n) if i != position]
            rng.shuffle(handled)
            prompts.append(render(frame, items, position, handled, task))
    return prompts


# ----------------------------------------------------------------------------------------------
# Reports and registration


def _span(values: Sequence[int]) -> str:
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}-{high}"


def lexicon_record(tokenizer, frames: Sequence[Frame] = FRAMES) -> dict[str, dict[str, int]]:
    """Per frame, how many lexicon items are single tokens for this tokenizer (for reports)."""
    return {frame: {"single_token_items": usable, "lexicon_items": total}
            for frame, (usable, total) in lexicon_survival(tokenizer, frames).items()}


def report_lexicon(task: str, title: str, frames: Sequence[Frame], tokenizer, n_items: Sequence[int]) -> None:
    """One status line on how many lexicon items are single tokens, and a warning per frame that
    is too small for some N (those lists silently rotate over fewer frames otherwise)."""
    survival = lexicon_survival(tokenizer, frames)
    usable = {name: counts[0] for name, counts in survival.items()}
    ui.info(f"{title} lexicon: {len(survival)} frames, {_span(list(usable.values()))} single-token items "
            f"each (of {_span([total for _, total in survival.values()])})")
    for name, (count, total) in survival.items():
        ui.debug(f"{task} frame '{name}': {count} of {total} items are single tokens")
    for name, ns in frames_left_out(usable, n_items).items():
        ui.warn(f"{task} frame '{name}' has only {usable[name]} single-token items, so it is not used for "
                f"N={', '.join(map(str, ns))}")


def list_task(name: str, description: str, title: str, frames: Sequence[Frame], tuning: Sequence[str],
              held_out: Sequence[str], default: bool = False, split_keys: tuple[str, str] | None = None) -> Task:
    """A list-recall task over `frames`, `tuning` and `held_out` (frame names) its fixed split;
    `split_keys`: where search.json records the split (default tuning_<name>_frames, held_out_<name>_frames)."""
    if set(tuning) & set(held_out) or set(tuning) | set(held_out) != {f.name for f in frames}:
        raise ValueError(f"{name}: the tuning and held-out frames must split the frames")
    split = {None: None, "tuning": tuple(tuning), "held_out": tuple(held_out)}
    tuning_key, held_out_key = split_keys or (f"tuning_{name}_frames", f"held_out_{name}_frames")
    return Task(
        name, description,
        generate=lambda tokenizer, n_items, n_prompts, seed, part: generate_lists(
            name, frames, tokenizer, n_items, n_prompts, seed, split[part]),
        default=default,
        setup_record=lambda tokenizer: {f"{name}_lexicon": lexicon_record(tokenizer, frames)},
        announce=lambda tokenizer, n_items: report_lexicon(name, title, frames, tokenizer, n_items),
        splits={"tuning": tuple(tuning), "held_out": tuple(held_out)},
        split_record={tuning_key: tuple(tuning), held_out_key: tuple(held_out)},
    )


# Tuning and held-out prompts of a search never share a frame.
TUNING_FRAMES = ("laundry", "shopping", "packing", "cleaning")
HELD_OUT_FRAMES = ("cooking", "gardening", "tools")

LAUNDRY = register(list_task("laundry", "laundry-list recall (objects)", "laundry-list", FRAMES, TUNING_FRAMES,
                             HELD_OUT_FRAMES, default=True, split_keys=("tuning_frames", "held_out_frames")))
