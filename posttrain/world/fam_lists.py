"""List and word families: `list_n`, `word_transform`, `sort_words`, `multi_turn`."""

from __future__ import annotations

import random
import re

from posttrain.data.types import Message
from posttrain.world.core import Pool, Score, Task, finish, make_task, user
from posttrain.world.pools import CATEGORIES, CATEGORY_MEMBERS, WORDS
from posttrain.world.text import in_set, items, lines, strip_answer

_ALIASES = frozenset({"grey", "aluminium", "bike", "plane", "gull", "spanner", "lorry"})  # accepted, never sampled
_LIST_TEMPLATES = Pool(
    train=("List {n} {cat}.", "Name {n} {cat}.", "Give me a list of {n} {cat}."),
    test=("Can you tell me {n} different {cat}?", "Write down {n} examples of {cat}."),
)


def _sample_members(rng: random.Random, category: str, n: int) -> list[str]:
    return rng.sample([m for m in CATEGORY_MEMBERS[category] if m not in _ALIASES], n)


class ListN:
    """"List N CATEGORY" (N in 3..6), answered as a comma-separated or one-per-line list.

    Checks: `in_category` (fraction of the items that belong to the category's entity set), `count`
    (1.0 when exactly N items, linear partial credit), `no_duplicates` (items exist and none repeats).
    gold = in_category * (0.4 + 0.4 * count + 0.2 * no_duplicates): off-category items earn nothing.
    """

    name = "list_n"
    pools = {"templates": _LIST_TEMPLATES, "categories": CATEGORIES}

    def generate(self, rng: random.Random, split: str) -> Task:
        n, category = rng.randint(3, 6), CATEGORIES.pick(rng, split)
        prompt = _LIST_TEMPLATES.pick(rng, split).format(n=n, cat=category)
        reference = ", ".join(_sample_members(rng, category, n)).capitalize() + "."
        return make_task(self.name, [user(prompt)], {"n": n, "category": category}, reference)

    def score(self, meta: dict, response: str, stopped: bool = True) -> Score:
        got, members = items(response), CATEGORY_MEMBERS[meta["category"]]
        checks = {
            "count": max(0.0, 1.0 - abs(len(got) - meta["n"]) / meta["n"]),
            "in_category": sum(in_set(x, members) for x in got) / len(got) if got else 0.0,
            "no_duplicates": bool(got) and len(set(got)) == len(got),
        }
        gold = checks["in_category"] * (0.4 + 0.4 * checks["count"] + 0.2 * checks["no_duplicates"])
        return finish(gold, checks, response, meta, stopped)


_TRANSFORM_TEMPLATES = {
    "reverse": Pool(train=("Reverse the word '{w}'.", "Write '{w}' backwards."),
                    test=("Spell '{w}' in reverse order.", "What is '{w}' written from right to left?")),
    "upper": Pool(train=("Write '{w}' in upper case.", "Convert '{w}' to capital letters."),
                  test=("Give me '{w}' in all caps.", "Rewrite '{w}' using only uppercase letters.")),
    "spell": Pool(train=("Spell '{w}' with hyphens between the letters.", "Spell out '{w}' letter by letter, joined by hyphens."),
                  test=("Write the letters of '{w}' separated by dashes.", "Hyphenate every letter of '{w}'.")),
}
_TRANSFORMS = {"reverse": lambda w: w[::-1], "upper": str.upper, "spell": "-".join}


class WordTransform:
    """Reverse a word, upper-case it, or spell it with hyphens (`a-p-p-l-e`).

    Checks: `exact` (the response, without quotes and a final period, equals the target; case matters
    only for upper case) and `contains` (the target appears as a whole token).
    gold = 1.0 if exact, 0.5 if only contains, else 0.
    """

    name = "word_transform"
    pools = {"words": WORDS, **{f"templates_{k}": p for k, p in _TRANSFORM_TEMPLATES.items()}}

    def generate(self, rng: random.Random, split: str) -> Task:
        op, word = rng.choice(tuple(_TRANSFORMS)), WORDS.pick(rng, split)
        prompt = _TRANSFORM_TEMPLATES[op].pick(rng, split).format(w=word)
        target = _TRANSFORMS[op](word)
        return make_task(self.name, [user(prompt)], {"op": op, "target": target}, target)

    def score(self, meta: dict, response: str, stopped: bool = True) -> Score:
        flags = 0 if meta["op"] == "upper" else re.IGNORECASE
        target = meta["target"]
        exact = re.fullmatch(re.escape(target), strip_answer(response), flags) is not None
        contains = re.search(r"(?<![\w-])" + re.escape(target) + r"(?![\w-])", response, flags) is not None
        gold = 1.0 if exact else 0.5 if contains else 0.0
        return finish(gold, {"exact": exact, "contains": contains}, response, meta, stopped)


_SORT_TEMPLATES = Pool(
    train=("Sort these words alphabetically: {words}.", "Put the following words in alphabetical order: {words}."),
    test=("Alphabetize this list: {words}.", "Arrange {words} from A to Z."),
)


class SortWords:
    """Sort 3-6 words alphabetically.

    Checks: `same_items` (the response lists exactly the given words) and `sorted_order` (they are in
    alphabetical order). gold = 0.4 * same_items + 0.6 * sorted_order.
    """

    name = "sort_words"
    pools = {"templates": _SORT_TEMPLATES, "words": WORDS}

    def generate(self, rng: random.Random, split: str) -> Task:
        given = WORDS.sample(rng, split, rng.randint(3, 6))
        if given == sorted(given):
            given = given[1:] + given[:1]  # never hand out an already sorted list
        prompt = _SORT_TEMPLATES.pick(rng, split).format(words=", ".join(given))
        target = sorted(given)
        return make_task(self.name, [user(prompt)], {"target": target}, ", ".join(target))

    def score(self, meta: dict, response: str, stopped: bool = True) -> Score:
        got = items(response)
        checks = {"same_items": sorted(got) == meta["target"], "sorted_order": got == meta["target"]}
        return finish(0.4 * checks["same_items"] + 0.6 * checks["sorted_order"], checks, response, meta, stopped)


_FOLLOW_UPS = {
    "upper": Pool(train=("Now in upper case.", "Now write that in capital letters."),
                  test=("Can you redo that in all caps?", "Same list, but uppercase please.")),
    "reverse": Pool(train=("Now reverse the order.", "Now list them backwards."),
                    test=("Flip the order of that list.", "Give me those again, last one first.")),
    "numbered": Pool(train=("Now as a numbered list.", "Now number them, one per line."),
                     test=("Put those on separate lines with numbers.", "Turn that into a numbered list.")),
    "first": Pool(train=("Now give me just the first one.", "Only the first item, please."),
                  test=("Which one did you list first? Reply with just that.", "Keep only the first of those.")),
    "only_k": Pool(train=("Now make it shorter: keep only {k} of them.", "Now cut it down to {k} items."),
                   test=("Too long. Give me only {k} of those.", "Shorten that to just {k} items.")),
}
_MT_WEIGHTS = {"upper": ("same_items", "all_caps"), "reverse": ("reversed_order", "same_set"),
               "numbered": ("same_items", "numbered"), "first": ("correct_item", "only_one"),
               "only_k": ("from_previous", "count")}  # (0.6 check, 0.4 check)


class MultiTurn:
    """A follow-up turn that transforms the assistant's previous list ("List N CATEGORY" first).

    `uses_previous`: some item of the previous answer appears; without it the score is 0. Then per
    follow-up a main check (0.6) and a form check (0.4): upper: `same_items` (the previous items, in order) /
    `all_caps` (letters and no lower-case); reverse: `reversed_order` / `same_set`; numbered:
    `same_items` / `numbered` (exactly N lines numbered 1..N); first: `correct_item` / `only_one`;
    only_k ("keep only K of them"): `from_previous` (items exist and all are previous items) / `count`.
    gold = uses_previous * (0.6 * main + 0.4 * form).
    """

    name = "multi_turn"
    pools = {"base_templates": _LIST_TEMPLATES, "categories": CATEGORIES,
             **{f"follow_up_{k}": p for k, p in _FOLLOW_UPS.items()}}

    def generate(self, rng: random.Random, split: str) -> Task:
        n, category, op = rng.randint(3, 5), CATEGORIES.pick(rng, split), rng.choice(tuple(_FOLLOW_UPS))
        prev = _sample_members(rng, category, n)
        k = rng.randint(1, n - 1)
        messages = [user(_LIST_TEMPLATES.pick(rng, split).format(n=n, cat=category)),
                    Message("assistant", ", ".join(prev).capitalize() + "."),
                    user(_FOLLOW_UPS[op].pick(rng, split).format(k=k))]
        reference = {"upper": ", ".join(prev).upper() + ".", "reverse": ", ".join(prev[::-1]).capitalize() + ".",
                     "numbered": "\n".join(f"{i}. {x.capitalize()}" for i, x in enumerate(prev, 1)),
                     "first": prev[0].capitalize() + ".", "only_k": ", ".join(prev[:k]).capitalize() + "."}[op]
        return make_task(self.name, messages, {"op": op, "previous": prev, "k": k}, reference)

    def score(self, meta: dict, response: str, stopped: bool = True) -> Score:
        prev, got, rows = meta["previous"], items(response), lines(response)
        letters = [c for c in response if c.isalpha()]
        checks = {
            "same_items": got == prev, "all_caps": bool(letters) and all(c.isupper() for c in letters),
            "reversed_order": got == prev[::-1], "same_set": sorted(got) == sorted(prev),
            "numbered": len(rows) == len(prev) and all(re.match(rf"{i}[.)]\s", r) for i, r in enumerate(rows, 1)),
            "correct_item": bool(got) and got[0] == prev[0], "only_one": len(got) == 1,
            "from_previous": bool(got) and all(x in prev for x in got), "count": len(got) == meta["k"],
        }
        main, side = _MT_WEIGHTS[meta["op"]]
        checks = {"uses_previous": any(x in prev for x in got), main: checks[main], side: checks[side]}
        gold = checks["uses_previous"] * (0.6 * checks[main] + 0.4 * checks[side])
        return finish(gold, checks, response, meta, stopped)
