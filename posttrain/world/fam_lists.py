"""List and word families: `list_n`, `word_transform`, `sort_words`, `multi_turn`."""

from __future__ import annotations

import random
import re

from posttrain.data.types import Message
from posttrain.world.core import Pool, Score, Task, finish, make_task, user
from posttrain.world.pools import CATEGORIES, CATEGORY_MEMBERS, PROMPT_WORDS
from posttrain.world.text import in_set, items, lines, strip_answer

_ALIASES = frozenset({"grey", "aluminium", "bike", "plane", "gull", "spanner", "lorry"})  # accepted, never sampled
_LIST_TEMPLATES = Pool(
    train=(
        "List {n} {cat}.", "Name {n} {cat}.", "Give me a list of {n} {cat}.", "Please list {n} {cat}.",
        "Could you name {n} {cat}?", "What are {n} examples of {cat}?", "quick q: can you list {n} {cat}?",
        "I'm making a quiz. Name {n} {cat}, please.", "Tell me {n} {cat}.", "hey, give me {n} {cat}.",
        "List {n} different {cat}. Thanks!", "For a word game, I need {n} {cat}. List them.",
    ),
    test=(
        "Can you tell me {n} different {cat}?", "Write down {n} examples of {cat}.", "Please name {n} {cat} for me.",
        "Give me {n} examples of {cat}, please.", "hey, can you name {n} {cat}?", "I'm writing a quiz. List {n} {cat}.",
        "Quick question: what are {n} {cat}? Thanks!", "Tell me {n} examples of {cat}.",
    ),
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


# No apostrophe outside the quotes around the word (the quoted word is the first '...' of a prompt).
_TRANSFORM_TEMPLATES = {
    "reverse": Pool(
        train=("Reverse the word '{w}'.", "Write '{w}' backwards.", "Please reverse '{w}'.",
               "Could you write the word '{w}' backwards?", "Spell '{w}' backwards.",
               "quick q: what is '{w}' backwards?", "What do you get if you reverse '{w}'?",
               "Reverse the letters of '{w}', please.", "hey, write '{w}' back to front.",
               "For a word game: reverse '{w}'.", "Give me '{w}' spelled backwards.",
               "Write the word '{w}' in reverse. Thanks!"),
        test=("Spell '{w}' in reverse order.", "What is '{w}' written from right to left?",
              "Can you reverse the word '{w}'?", "Tell me '{w}' backwards.", "I need '{w}' reversed, please.",
              "hey, how do you write '{w}' backwards?", "Put the letters of '{w}' in reverse order.",
              "Write '{w}' reversed. Thanks!")),
    "upper": Pool(
        train=("Write '{w}' in upper case.", "Convert '{w}' to capital letters.", "Please write '{w}' in uppercase.",
               "Could you convert '{w}' to upper case?", "Make '{w}' all capital letters.",
               "quick q: what is '{w}' in capital letters?", "Write the word '{w}' in all caps.",
               "Change '{w}' to uppercase, please.", "hey, capitalize every letter of '{w}'.",
               "For a sign: write '{w}' in capital letters.", "Give me the word '{w}' in upper case. Thanks!",
               "Uppercase the word '{w}'."),
        test=("Give me '{w}' in all caps.", "Rewrite '{w}' using only uppercase letters.",
              "Can you write '{w}' in capitals?", "Tell me '{w}' in upper case, please.",
              "hey, put '{w}' in all capital letters.", "Turn '{w}' into uppercase. Thanks!",
              "How is '{w}' written in capital letters?", "Convert the word '{w}' to all caps.")),
    "spell": Pool(
        train=("Spell '{w}' with hyphens between the letters.", "Spell out '{w}' letter by letter, joined by hyphens.",
               "Please spell '{w}' with a hyphen between each letter.",
               "Could you spell '{w}' letter by letter, with hyphens?", "Write '{w}' with hyphens between its letters.",
               "quick q: how is '{w}' spelled with hyphens between the letters?",
               "Spell the word '{w}' using hyphens between letters.", "hey, spell out '{w}' with hyphens.",
               "Put a hyphen between every letter of '{w}'.",
               "For a spelling game: write '{w}' letter by letter with hyphens.",
               "Give me '{w}' spelled out with hyphens in between. Thanks!",
               "Separate the letters of '{w}' with hyphens."),
        test=("Write the letters of '{w}' separated by dashes.", "Hyphenate every letter of '{w}'.",
              "Can you spell '{w}' with dashes between the letters?", "Tell me the letters of '{w}', joined by hyphens.",
              "hey, spell '{w}' out with a dash between letters.", "Please split '{w}' into letters joined with hyphens.",
              "Spell '{w}' letter by letter using hyphens. Thanks!", "Insert a hyphen between each letter of '{w}'.")),
}
_TRANSFORMS = {"reverse": lambda w: w[::-1], "upper": str.upper, "spell": "-".join}


class WordTransform:
    """Reverse a word, upper-case it, or spell it with hyphens (`a-p-p-l-e`).

    Checks: `exact` (the response, without quotes and a final period, equals the target; case matters
    only for upper case) and `contains` (the target appears as a whole token).
    gold = 1.0 if exact, 0.5 if only contains, else 0.
    """

    name = "word_transform"
    pools = {"words": PROMPT_WORDS, **{f"templates_{k}": p for k, p in _TRANSFORM_TEMPLATES.items()}}

    def generate(self, rng: random.Random, split: str) -> Task:
        op, word = rng.choice(tuple(_TRANSFORMS)), PROMPT_WORDS.pick(rng, split)
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
    train=(
        "Sort these words alphabetically: {words}.", "Put the following words in alphabetical order: {words}.",
        "Please sort these words in alphabetical order: {words}.", "Could you sort these words alphabetically? {words}",
        "quick q: what is {words} in alphabetical order?", "Sort alphabetically: {words}.",
        "I'm organizing labels. Sort them alphabetically: {words}.", "hey, put {words} in alphabetical order.",
        "Order these words alphabetically, please: {words}.", "Give me these words sorted alphabetically: {words}.",
        "Arrange these words in alphabetical order: {words}. Thanks!",
        "Here are some words: {words}. Sort them alphabetically.",
    ),
    test=(
        "Alphabetize this list: {words}.", "Arrange {words} from A to Z.",
        "Can you list these words in alphabetical order? {words}", "Please alphabetize: {words}.",
        "hey, sort {words} from A to Z.", "I'm making an index. Put these in alphabetical order: {words}.",
        "Tell me these words in alphabetical order: {words}. Thanks!", "What is the alphabetical order of {words}?",
    ),
)


class SortWords:
    """Sort 3-6 words alphabetically.

    Checks: `same_items` (the response lists exactly the given words) and `sorted_order` (they are in
    alphabetical order). gold = 0.4 * same_items + 0.6 * sorted_order.
    """

    name = "sort_words"
    pools = {"templates": _SORT_TEMPLATES, "words": PROMPT_WORDS}

    def generate(self, rng: random.Random, split: str) -> Task:
        given = PROMPT_WORDS.sample(rng, split, rng.randint(3, 6))
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
    "upper": Pool(
        train=("Now in upper case.", "Now write that in capital letters.", "Please write that in all caps.",
               "Could you repeat that list in uppercase?", "Now make it all capital letters.",
               "Write the same list in upper case, please.", "hey, now in capitals.", "Again, but in uppercase.",
               "Now the same thing in all caps. Thanks!", "Repeat those in capital letters.",
               "Change that to upper case.", "Now uppercase every item."),
        test=("Can you redo that in all caps?", "Same list, but uppercase please.", "Now rewrite it in capital letters.",
              "Give me that list again in upper case.", "hey, can I get those in all caps?",
              "Convert that list to uppercase. Thanks!", "Could you put those items in capitals?",
              "Please repeat them in upper case.")),
    "reverse": Pool(
        train=("Now reverse the order.", "Now list them backwards.", "Please list them in reverse order.",
               "Could you reverse the order of that list?", "Same items, reverse order.",
               "Now list them from last to first.", "hey, reverse that list.",
               "Write those again in reverse order. Thanks!", "Now give them to me in the opposite order.",
               "Reverse the list.", "Repeat the list, but in reverse order.", "Can I get those in reverse order?"),
        test=("Flip the order of that list.", "Give me those again, last one first.", "Now put them in reverse order.",
              "Please reverse the order of those items.", "hey, same list but reversed.",
              "Turn that list around so the last item comes first.", "Reverse the order, please. Thanks!",
              "Tell me those items again in reverse order.")),
    "numbered": Pool(
        train=("Now as a numbered list.", "Now number them, one per line.", "Please make that a numbered list.",
               "Could you rewrite that as a numbered list?", "Now put each one on its own line, numbered.",
               "hey, numbered list please.", "Write them as a numbered list, one per line.",
               "Same items as a numbered list. Thanks!", "List them again with numbers, one per line.",
               "Now give me a numbered list of those.", "Number the items, each on its own line.",
               "Make it a numbered list instead."),
        test=("Put those on separate lines with numbers.", "Turn that into a numbered list.",
              "Can you show those as a numbered list?", "Please write each item on a new line with its number.",
              "hey, can I get that as a numbered list?", "Redo that as a numbered list. Thanks!",
              "Give me those again, numbered, one per line.", "Rewrite the list with numbers, one item per line.")),
    "first": Pool(
        train=("Now give me just the first one.", "Only the first item, please.", "What was the first one? Just that item.",
               "Could you repeat only the first item?", "Now just the first item.", "hey, just the first one please.",
               "Give me only the first item from that list.", "Keep just the first item and drop the rest.",
               "Repeat only the first one. Thanks!", "Now only the first one, nothing else.",
               "Tell me just the first item.", "I only need the first one. Just that, please."),
        test=("Which one did you list first? Reply with just that.", "Keep only the first of those.",
              "Can you give me only the first one?", "Just the first item from that list, please.",
              "hey, only the first one.", "Now reply with the first item alone.",
              "Drop everything except the first item. Thanks!", "Please tell me only the first item of that list.")),
    "only_k": Pool(
        train=("Now make it shorter: keep only {k} of them.", "Now cut it down to {k} items.",
               "Please keep only {k} of them.", "Could you shorten that to {k} of them?", "Now give me just {k} of those.",
               "hey, only {k} of them please.", "Too many. Keep just {k} of them.", "List only {k} of those. Thanks!",
               "I only need {k} of them. Cut the rest.", "Pick {k} of those and drop the others.",
               "Now just {k} of them, please.", "Trim that list to {k} of them."),
        test=("Too long. Give me only {k} of those.", "Shorten that to just {k} items.", "Can you keep only {k} of those?",
              "hey, I just need {k} of them.", "Please cut that list down to {k} of them.",
              "Only {k} of those, please. Thanks!", "Now list just {k} of them.", "Give me {k} of them, not more.")),
}
_MT_WEIGHTS = {"upper": ("same_items", "all_caps"), "reverse": ("reversed_order", "same_set"),
               "numbered": ("same_items", "numbered"), "first": ("correct_item", "only_one"),
               "only_k": ("from_previous", "count")}  # (0.6 check, 0.4 check)


def _follow_up_reference(op: str, prev: list[str], k: int) -> str:
    """The follow-up's reference answer: `op` applied to the previous list `prev`."""
    if op == "upper":
        return ", ".join(prev).upper() + "."
    if op == "reverse":
        return ", ".join(prev[::-1]).capitalize() + "."
    if op == "numbered":
        return "\n".join(f"{i}. {x.capitalize()}" for i, x in enumerate(prev, 1))
    return ", ".join(prev[:1 if op == "first" else k]).capitalize() + "."  # first, only_k


class MultiTurn:
    """A follow-up turn that transforms the assistant's previous list ("List N CATEGORY" first).

    `uses_previous`: some item of the previous answer appears; without it the score is 0. Then per
    follow-up a main check (0.6) and a form check (0.4): upper: `same_items` (the previous items, in order) /
    `all_caps` (letters and no lower-case); reverse: `reversed_order` / `same_set`; numbered:
    `same_items` / `numbered` (exactly N lines numbered 1..N); first: `correct_item` / `only_one`;
    only_k ("keep only K of them"): `from_previous` (items exist and all are previous items) / `count`.
    gold = uses_previous * (0.6 * main + 0.4 * form).

    The first turn is a `list_n` task (`first_turn`); `follow_up` puts another first answer (a model's own)
    in the history and checks the follow-up against that answer's list.
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
        meta = {"op": op, "previous": prev, "k": k, "category": category}
        return make_task(self.name, messages, meta, _follow_up_reference(op, prev, k))

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


def first_turn(task: Task) -> Task:
    """The first turn of a `multi_turn` task as the `list_n` task it is: the user's "List N CATEGORY" alone
    (meta `n`, `category`), its reference the assistant turn the task holds, which `ListN` scores 1.0."""
    meta = {"n": len(task.meta["previous"]), "category": task.meta["category"]}
    return make_task(ListN.name, task.messages[:1], meta, task.messages[1].content)


def follow_up(task: Task, answer: str) -> Task:
    """The `multi_turn` task with `answer` as the assistant's first turn instead of the reference one: the
    previous list is `answer`'s items (`text.items`, as the verifier reads a list), the reference is the
    follow-up applied to them (so the rambling check measures against it). The task's own first answer gives
    the task back."""
    prev = items(answer)
    messages = [task.messages[0], Message("assistant", answer), *task.messages[2:]]
    meta = {k: v for k, v in task.meta.items() if k != "ref_chars"}
    return make_task(task.family, messages, {**meta, "previous": prev},
                     _follow_up_reference(task.meta["op"], prev, task.meta["k"]))
