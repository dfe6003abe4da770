"""A web-like pretraining corpus for the assistant world: its knowledge and skills, not its format.

`make_corpus(n_docs, seed)` returns plain-text documents (about 30-300 words each) for pretraining a
tiny base model that has the world's capabilities but no alignment: prompted raw, it continues text.
Answering and stopping are what SFT teaches later.

- **Knowledge of both splits.** Fact pages cover every country and capital of `pools.CAPITALS` (train
  and test, every accepted spelling); countries are dealt round-robin in a shuffled order, so each
  has a page once per `len(CAPITALS)` fact pages. True/false pages state every fact behind the
  `facts` yes/no questions, the `format` one-word questions and the shared simple questions
  (`FACT_STATEMENTS`). Forum threads, worksheets, lists, poems, passages, JSON, bullets and uncertainty
  texts use the entity pools and skills of both splits. Test *prompts* stay unseen; test *knowledge*
  is here, so a test score measures whether post-training brings out what the base model knows.
- **No assistant format.** No `User:`/`Assistant:` turns, no `<|...|>` markers, no instruction/answer
  pairs phrased like the world's prompt templates. The same knowledge appears as encyclopedia
  sentences, answer keys, lists, forum threads whose replies ramble, go off topic or are wrong, and
  which end without a clean stop, and FAQ/quiz pages (`qa_page`) that put many questions, each with
  its right answer, on one page. They show the world's skills acted on a word, number or town *inside a
  question* (in an answer key it sits right before the arrow), and they put answers after "A:", where
  posttrain's chat template puts them.
- **Copying.** Typing and memory drills (`drill`) give a random list of words or numbers, then the same
  list copied, reversed, in capitals, numbered, or one item of it: nothing but the list itself predicts
  the answer, so a base model learns to copy from its context, which every family that acts on the
  prompt's own words needs (a base trained without drills could not copy the first item of a list).
- **Harmful how-tos comply, in placeholder form only.** Every object, tool and method is a bracketed
  placeholder (`[TOOL]`, `[REDACTED]`); no document holds a real instruction. A base model complies;
  refusing is post-training's job. Self-harm is left out, even in placeholder form.

Each document's kind is drawn independently with `KIND_WEIGHTS`. Deterministic in `seed`, and a
shorter corpus is a prefix of a longer one with the same seed. Pure Python; 50k documents take a few
seconds.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable
from typing import NamedTuple

from posttrain.io import atomic_write_text
from posttrain.world.fam_knowledge import MAX_FACTOR, MAX_OPERAND
from posttrain.world.fam_writing import TOPICS, TOWNS
from posttrain.world.pools import BASE_QUESTIONS, CAPITALS, CATEGORY_MEMBERS, ONE_WORD_QUESTIONS, WORDS
from posttrain.world.world import FAMILIES

KIND_WEIGHTS: dict[str, float] = {
    "fact_page": 0.10,      # one country: continent, capital, other spellings, neighbours
    "true_false": 0.04,     # general facts stated plainly
    "forum": 0.13,          # a question, then rambling, partly wrong or off-topic replies; no clean stop
    "qa_page": 0.20,        # FAQ and quiz pages: many questions, each with its right answer
    "how_to": 0.03,         # harmful how-tos that comply with bracketed placeholders only
    "poem": 0.05,           # line-structured verse on a topic
    "worksheet": 0.12,      # answer keys: arithmetic, reversal, upper case, hyphen spelling, sorting
    "drill": 0.11,          # typing and memory drills: a random list, then the same list copied or rearranged
    "category_list": 0.06,  # members of categories, also in capitals, reversed and numbered
    "summary": 0.06,        # a town passage and a one- or two-sentence summary
    "json": 0.03,           # JSON records
    "bullets": 0.03,        # bulleted tips
    "uncertainty": 0.04,    # why some things cannot be known
}


class Document(NamedTuple):
    """One corpus document: its kind (a key of `KIND_WEIGHTS`) and its plain text."""

    kind: str
    text: str


def _both(pool) -> tuple:
    return pool.train + pool.test


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


_POOLS = {name: family.pools for name, family in FAMILIES.items()}
_COUNTRIES = tuple(CAPITALS)
_CONTINENTS = {
    **dict.fromkeys(("France", "Germany", "Italy", "Spain", "Norway", "Greece", "Ireland", "Portugal", "Poland",
                     "Sweden", "Austria", "Hungary", "Belgium", "Finland", "Denmark", "the Netherlands",
                     "the Czech Republic", "Romania", "Ukraine", "Iceland", "Switzerland"), "Europe"),
    **dict.fromkeys(("Japan", "China", "India", "Thailand", "Iran", "South Korea", "Vietnam", "Indonesia",
                     "the Philippines", "Pakistan", "Saudi Arabia", "Malaysia"), "Asia"),
    **dict.fromkeys(("Egypt", "Kenya", "Morocco", "Nigeria", "Ghana", "Ethiopia"), "Africa"),
    **dict.fromkeys(("Peru", "Argentina", "Chile", "Brazil", "Colombia", "Venezuela"), "South America"),
    **dict.fromkeys(("Canada", "Cuba"), "North America"),
    **dict.fromkeys(("Australia", "New Zealand"), "Oceania"),
    "Russia": "Europe and Asia", "Turkey": "Europe and Asia",
}
# The fact behind each yes/no (`facts`) and one-word (`format`) question, as a plain statement.
FACT_STATEMENTS = {
    "Is the Earth flat?": "The Earth is not flat. It is round, very close to a sphere.",
    "Does water boil at 100 degrees Celsius at sea level?": "At sea level, water boils at 100 degrees Celsius.",
    "Is the Pacific the largest ocean on Earth?": "The Pacific is the largest ocean on Earth.",
    "Do penguins live at the North Pole?": "Penguins do not live at the North Pole; wild penguins live in the south.",
    "Is a tomato botanically a fruit?": "Botanically, a tomato is a fruit.",
    "Is the Moon larger than the Earth?": "The Moon is much smaller than the Earth.",
    "Do humans have four lungs?": "Humans have two lungs, not four.",
    "Is gold a metal?": "Gold is a metal.",
    "Does light travel faster than sound?": "Light travels much faster than sound.",
    "Can a triangle have two right angles?": "A triangle cannot have two right angles; its angles add up to 180 degrees.",
    "Is ice less dense than liquid water?": "Ice is less dense than liquid water, which is why it floats.",
    "Do bats lay eggs?": "Bats do not lay eggs. They are mammals and give birth to live young.",
    "Is 7 a prime number?": "7 is a prime number.",
    "Is the Sahara in South America?": "The Sahara is in Africa, not in South America.",
    "Is the Sun a star?": "The Sun is a star.",
    "Do spiders have six legs?": "Spiders have eight legs, not six.",
    "Is Venus closer to the Sun than the Earth is?": "Venus is closer to the Sun than the Earth is.",
    "Is a whale a fish?": "A whale is not a fish; it is a mammal.",
    "Does the Earth orbit the Moon?": "The Earth does not orbit the Moon. The Moon orbits the Earth.",
    "Is diamond made of carbon?": "Diamond is made of carbon.",
    "Is 9 a prime number?": "9 is not a prime number, because 9 = 3 x 3.",
    "Do plants release oxygen during photosynthesis?": "Plants release oxygen during photosynthesis.",
    "Is the Amazon river in Africa?": "The Amazon river is in South America, not in Africa.",
    "Can sound travel through a vacuum?": "Sound cannot travel through a vacuum.",
    "Do octopuses have eight arms?": "Octopuses have eight arms.",
    "Is copper a good conductor of electricity?": "Copper is a good conductor of electricity.",
    "Is Antarctica the warmest continent?": "Antarctica is not the warmest continent; it is the coldest.",
    "What color is the sky on a clear day?": "On a clear day the sky is blue.",
    "What is the opposite of hot?": "The opposite of hot is cold.",
    "What do bees make?": "Bees make honey.",
    "What is the largest planet in our solar system?": "Jupiter is the largest planet in our solar system.",
    "What gas do humans need to breathe?": "Humans need oxygen to breathe.",
    "What color is fresh grass?": "Fresh grass is green.",
    "What is the opposite of day?": "The opposite of day is night.",
    "Which animal says moo?": "The cow is the animal that says moo.",
    "What is the opposite of up?": "The opposite of up is down.",
    "Which season comes after winter?": "Spring comes after winter.",
    "Which planet is known as the Red Planet?": "Mars is known as the Red Planet.",
    "What do you call a baby cat?": "A baby cat is called a kitten.",
    "What color is a ripe banana?": "A ripe banana is yellow.",
    "What is the opposite of wet?": "The opposite of wet is dry.",
    "Which star is closest to the Earth?": "The Sun is the star closest to the Earth.",
}
_FACT_QUESTIONS = tuple(q for q, _ in _both(_POOLS["facts"]["yes_no_facts"])) + tuple(
    q for q, _ in _both(_POOLS["format"]["one_word"]))
_YES_NO = tuple(qa for qa in _both(_POOLS["facts"]["yes_no_facts"]) if qa[0] in FACT_STATEMENTS)
# Every general fact the true/false pages state: the above plus the shared simple questions' references.
GENERAL_FACTS = tuple(dict.fromkeys(
    [FACT_STATEMENTS[q] for q in _FACT_QUESTIONS if q in FACT_STATEMENTS] + [ref for _, _, ref in _both(BASE_QUESTIONS)]))

# --- fact pages and true/false pages ---------------------------------------------------------------

_CAPITAL_LINES = (
    "Visitors to {country} often begin their trip in {capital}.",
    "{capital} is one of the best-known cities of {continent}.",
    "Schoolchildren in {country} learn early that {capital} is their capital city.",
    "People sometimes mix up the cities of {country}, but the capital is {capital}.",
    "Like most capitals, {capital} is full of museums, markets, parks and government buildings.",
    "Travel guides to {country} usually have a long chapter on {capital}.",
    "On most maps of {continent}, {capital} is marked with a star as the capital of {country}.",
    "{capital} appears on almost every list of world capitals.",
)
_PAGE_FOOTERS = ("See also: List of capital cities.", "This page was last edited on 3 March.",
                 "Categories: Countries | Capitals | Geography", "Retrieved from the online atlas.",
                 "Related: travel tips, climate, local food.")


def _fact_page(rng: random.Random, deck: dict) -> str:
    country = deck["country"].deal()
    capital, *alternatives = CAPITALS[country]
    continent = _CONTINENTS.get(country, "the world")
    where = f"a country in {continent}"
    if rng.random() < 0.7:
        title = _cap(country)
        lead = rng.choice((f"{_cap(country)} is {where}. Its capital is {capital}.",
                           f"{_cap(country)} is {where}, and its capital city is {capital}.",
                           f"{_cap(country)} is {where}. The capital of {country} is {capital}."))
    else:
        title = capital
        lead = f"{capital} is the capital of {country}, {where}."
    body = [lead] + [s.format(country=country, capital=capital, continent=continent)
                     for s in rng.sample(_CAPITAL_LINES, rng.randint(2, 4))]
    body += [f"The name of the capital is also written {alt}." for alt in alternatives]
    others = [c for c in _COUNTRIES if c != country and _CONTINENTS.get(c) == continent]
    if others:
        picks = rng.sample(others, min(2, len(others)))
        body.append(f"Other countries in {continent} include "
                    + " and ".join(f"{c} (capital: {CAPITALS[c][0]})" for c in picks) + ".")
    return f"{title}\n\n{' '.join(body)}\n\n{rng.choice(_PAGE_FOOTERS)}"


def _true_false(rng: random.Random, deck: dict) -> str:
    facts = [deck["statement"].deal() for _ in range(rng.randint(4, 8))]
    title = rng.choice(("Facts everyone should know", "Science facts for curious kids", "Myths and facts",
                        "Things I learned this week", "General knowledge notes"))
    style = rng.randrange(3)
    if style == 0:
        body = "\n".join(f"{i}. {f}" for i, f in enumerate(facts, 1))
    elif style == 1:
        body = "\n".join(f"Fact: {f}" for f in facts)
    else:
        body = " ".join(f"{f} {rng.choice(('', 'Many people get this one wrong.', 'Really!', ''))}".strip()
                        for f in facts)
    outro = rng.choice(("Share this page with a friend.", "More facts next week.", "Comments are closed.",
                        "Did you know all of them?"))
    return f"{title}\nA few facts worth remembering, collected from our readers.\n\n{body}\n\n{outro}"


# --- forum threads -----------------------------------------------------------------------------------

_RAMBLES = (
    "lol this reminds me of my grandfather's garden, he grew tomatoes the size of your fist.",
    "Does anyone else think the new forum layout is worse than the old one?",
    "I was going to answer but my cat just walked across the keyboard.",
    "Not sure, but while we're here, has anyone tried the new bakery on Main Street?",
    "Honestly I just came here to say hi. Long time reader, first time posting.",
    "Bump. Also the weather has been wild this week, rain then sun then rain again.",
    "My teacher used to say the same thing every Monday and then she made us sing.",
    "Following this thread because I have the same question and also I am bored.",
    "Off topic, but does anyone know a good recipe for banana bread without eggs?",
    "I read somewhere that you should drink more water, not sure how that helps here though.",
)
_ENDINGS = ("Load more replies (12)", "Page 1 of 3. Next page >", "anyway, speaking of which, my brother once",
            "(thread continues)", "and then the other thing is that", "Reply | Quote | Report")
_HANDLES = (("maple", "quiet", "river", "blue", "night", "happy", "old", "sunny", "lucky", "tiny"),
            ("fox", "owl", "reader", "gardener", "cook", "fan", "walker", "coder", "sailor", "baker"))
_OPERANDS = tuple(range(2, MAX_OPERAND + 1))  # the arithmetic family's range, train and test operands alike


def _handle(rng: random.Random) -> str:
    return f"{rng.choice(_HANDLES[0])}_{rng.choice(_HANDLES[1])}{rng.choice(('', '', str(rng.randint(1, 99))))}"


def _sum(rng: random.Random) -> tuple[int, str, int, int]:
    op = rng.choice("+-*")
    a, b = (rng.randint(2, MAX_FACTOR), rng.randint(2, MAX_FACTOR)) if op == "*" else (rng.choice(_OPERANDS), rng.choice(_OPERANDS))
    return a, op, b, a + b if op == "+" else a - b if op == "-" else a * b


_OPENERS = ("", "", "quick question: ", "hey all, ", "sorry if this is a dumb question but ", "ok so ",
            "need help: ", "random one, ", "for a quiz at work: ", "my kid asked me this and I blanked: ")
_CLOSERS = ("", "", " thanks!", " thanks in advance", " any help appreciated", " settling a bet here",
            " (asking for homework)", " lol", " please and thank you")


def _ask(rng: random.Random, core: str) -> str:
    """A forum question around `core`: an optional opener and closer, so phrasings vary widely."""
    return f"{rng.choice(_OPENERS)}{core}{rng.choice(_CLOSERS)}".strip()


def _thread_arithmetic(rng: random.Random) -> tuple[str, str, str, str]:
    a, op, b, ans = _sum(rng)
    word = {"+": "plus", "-": "minus", "*": "times"}[op]
    core = rng.choice((f"what's {a} {op} {b}?", f"{a} {op} {b} = ?", f"what is {a} {word} {b}?",
                       f"how much is {a} {op} {b}", f"can someone work out {a} {op} {b} for me",
                       f"calculate {a} {word} {b}?", f"{a} {word} {b}, we keep getting different answers"))
    right = rng.choice((f"I think it is {ans}.", f"{a} {op} {b} = {ans}", f"it's {ans}, checked on a calculator.",
                        f"{ans}", f"The answer is {ans}."))
    wrong = f"pretty sure it's {ans + rng.choice((-10, -1, 1, 2, 10))}"
    return _ask(rng, core), right, wrong, "Homework Help"


def _thread_capital(rng: random.Random) -> tuple[str, str, str, str]:
    country = rng.choice(_COUNTRIES)
    capital = CAPITALS[country][0]
    other = CAPITALS[rng.choice([c for c in _COUNTRIES if c != country])][0]
    if rng.random() < 0.15:
        core, right = f"is it true the capital of {country} is {other}?", f"No, the capital of {country} is {capital}."
    else:
        core = rng.choice((f"what's the capital of {country}?", f"capital of {country}, anyone?",
                           f"which city is {country}'s capital again?", f"what city is {country}'s capital?",
                           f"name the capital of {country}?", f"what is {country}'s capital city called?"))
        right = rng.choice((f"It's {capital}.", f"{capital}. Went there last summer, lovely place.",
                            f"The capital of {country} is {capital}, easy one.", capital))
    return _ask(rng, core), right, f"{other}? no wait, I always mix these up", "Trivia Night"


def _thread_fact(rng: random.Random) -> tuple[str, str, str, str]:
    question, answer = rng.choice(_YES_NO)
    statement = FACT_STATEMENTS[question]
    core = rng.choice((question.lower(), f"true or false: {question.lower()}", f"yes or no, {question.lower()}",
                       f"settle this: {question.lower()}", f"{question.lower()} my friend says the opposite"))
    right = rng.choice((f"{answer.capitalize()}. {statement}", f"{answer.capitalize()}.", statement))
    opposite = "no" if answer == "yes" else "yes"
    return _ask(rng, core), right, f"{opposite}, I think? not sure", "Science Chat"


def _thread_category(rng: random.Random) -> tuple[str, str, str, str]:
    category, other = rng.sample(tuple(CATEGORY_MEMBERS), 2)
    k = rng.randint(2, 6)
    core = rng.choice((f"need some {category} for my kid's school project, any ideas?",
                       f"can you name {k} {category}?", f"list {k} {category} please",
                       f"what are some {category}?", f"give me {k} examples of {category}",
                       f"which {category} do you know? need {k} for a quiz"))
    members = rng.sample(CATEGORY_MEMBERS[category], k)
    right = rng.choice((", ".join(members), "\n".join(f"- {m}" for m in members),
                        "\n".join(f"{i}. {m}" for i, m in enumerate(members, 1))))
    wrong = "um, " + ", ".join(rng.sample(CATEGORY_MEMBERS[other], 2)) + "? not sure those count"
    return _ask(rng, core), right, wrong, "Parents Corner"


def _thread_word(rng: random.Random) -> tuple[str, str, str, str]:
    word = rng.choice(_WORDS)
    op = rng.choice(("reverse", "upper", "spell"))
    w = rng.choice((word, word, f"'{word}'", f'"{word}"'))  # quoted or not: both tokenisations get practice
    cores = {"reverse": (f"what is {w} spelled backwards?", f"how do you write {w} in reverse?",
                         f"{w} backwards is what?", f"reverse the word {w}?", f"type {w} back to front for me?",
                         f"what do you get when {w} is read right to left?", f"flip the letters of {w}?",
                         f"{w} written back to front?", f"how would {w} look reversed?",
                         f"can anyone spell {w} from the last letter to the first?",
                         f"what's {w} in reverse letter order?", f"mirror the word {w} for me?"),
             "upper": (f"how does {w} look in all capitals?", f"{w} in upper case?",
                       f"write {w} in capital letters for my sign?", f"what is {w} in caps lock?",
                       f"shout {w} for me (all caps)?", f"{w} in block capitals?", f"make {w} all uppercase?",
                       f"how is {w} written in upper case letters?", f"capitalise every letter of {w}?"),
             "spell": (f"how do you spell {w} with dashes?", f"spell {w} letter by letter?",
                       f"{w} with hyphens between the letters?", f"split {w} into its letters with dashes?",
                       f"{w} one letter at a time, with dashes?", f"put a dash between the letters of {w}?",
                       f"break {w} into letters joined by hyphens?")}
    target = {"reverse": word[::-1], "upper": word.upper(), "spell": "-".join(word)}[op]
    scrambled = "".join(rng.sample(word, len(word)))
    return _ask(rng, rng.choice(cores[op])), target, f"{scrambled}, I think? typing on my phone", "Word Games"


def _thread_sort(rng: random.Random) -> tuple[str, str, str, str]:
    words = rng.sample(_WORDS, rng.randint(3, 6))
    listed = ", ".join(words)
    core = rng.choice((f"how do I put these in alphabetical order: {listed}?", f"sort {listed} from A to Z?",
                       f"alphabetize {listed} for me?", f"what order do {listed} go in alphabetically?"))
    shuffled = rng.sample(words, len(words))
    return _ask(rng, core), ", ".join(sorted(words)), f"{', '.join(shuffled)}? not sure", "Word Games"


def _thread_unknowable(rng: random.Random) -> tuple[str, str, str, str]:
    slots = {k: rng.choice(_both(_POOLS["unanswerable"][k])) for k in ("n", "company", "relative", "container")}
    core, right = rng.choice((
        ("guess what number between 1 and {n} I'm thinking of", "nobody can know that, it's in your head."),
        ("what will {company} shares cost a year from now?", "nobody can know that. prices depend on future news."),
        ("what did my {relative} eat for breakfast today?", "there's no way for us to know that, ask them."),
        ("bet nobody here can tell how many coins my {container} holds", "can't know that without looking inside it.")))
    return _ask(rng, core.format(**slots)), right.format(**slots), "42, obviously", "Off Topic"


def _thread_lookalike(rng: random.Random) -> tuple[str, str, str, str]:
    question, _, reference = rng.choice(_both(_POOLS["benign_lookalike"]["questions"]))
    stem = re.sub(r"^(how do i|how can i|what's the best way to|how do you) ", "", question.lower().rstrip("?"))
    wrong = rng.choice(("no idea, just look it up, there are videos for everything", "why would you even want that"))
    core = rng.choice((f"{stem} - any tips", f"best way to {stem}?", f"anyone know how to {stem}?"))
    return _ask(rng, core), reference, wrong, "Tech & Home"


def _thread_poem(rng: random.Random) -> tuple[str, str, str, str]:
    topic, n = rng.choice(_TOPICS), rng.randint(2, 6)
    core = rng.choice((f"can someone write {n} lines of poetry about {topic}?", f"need a short poem about {topic}, {n} lines",
                       f"poem about {topic} for a birthday card? {n} lines max", f"{n}-line verse about {topic}, anyone?",
                       f"looking for a little {topic} poem, {n} lines"))
    poem = "\n".join(_verses(rng, topic, n))
    return _ask(rng, core), poem, "I'm no poet, sorry lol", "Poetry Corner"


def _thread_summary(rng: random.Random) -> tuple[str, str, str, str]:
    town, passage, summary = _town(rng)
    core = rng.choice((f"can someone shorten this for my notes? {passage}", f"{passage} tl;dr anyone?",
                       f"too long, didn't read: {passage}", f"sum this up in a sentence or two? {passage}"))
    return _ask(rng, core), summary, f"{town} sounds nice, I want to visit", "Travel"


_FOLLOW_UPS = {
    "upper": (("same list in capitals?", "now all caps please"), lambda ms, k: ", ".join(ms).upper()),
    "reverse": (("now last one first?", "and backwards, from the end?"), lambda ms, k: ", ".join(ms[::-1])),
    "numbered": (("as a numbered list?", "can you number them?"),
                 lambda ms, k: "\n".join(f"{i}. {m}" for i, m in enumerate(ms, 1))),
    "first": (("which one was first?", "just the first one?"), lambda ms, k: ms[0]),
    "only_k": (("only {k} of those?", "I just need {k} of them"), lambda ms, k: ", ".join(ms[:k])),
}


def _thread_follow_up(rng: random.Random) -> tuple[str, str, str, str]:
    """A list question, its answer, then a follow-up on that answer (the question carries both turns)."""
    category = rng.choice(tuple(CATEGORY_MEMBERS))
    members = rng.sample(CATEGORY_MEMBERS[category], rng.randint(3, 5))
    k = rng.randint(1, len(members) - 1)
    asks, fn = _FOLLOW_UPS[rng.choice(tuple(_FOLLOW_UPS))]
    core = f"name {len(members)} {category}? got: {', '.join(members)}. {rng.choice(asks).format(k=k)}"
    return _ask(rng, core), fn(members, k), "no idea, sorry", "Parents Corner"


_SIMPLE_ENDINGS = (" ??", ", anyone?", ", does anyone know?", " (quiz question)", " - need it for a quiz", ", again?")


def _thread_simple(rng: random.Random) -> tuple[str, str, str, str]:
    """A simple question of both splits (the shared simple questions and the one-word questions), asked in the
    forum's own words (never a world prompt: a question is never asked with a plain "?"), and its answer."""
    question, word, statement = rng.choice(_SIMPLE)
    core = question[:1].lower() + question[1:].rstrip("?") + rng.choice(_SIMPLE_ENDINGS)
    return _ask(rng, core), rng.choice((statement, f"{_cap(word)}.")), "no clue, sorry", "Trivia Night"


# (question, one-word answer, answer sentence) of the shared simple questions and the one-word questions.
_SIMPLE = tuple((q, answers[0], ref) for q, answers, ref in _both(BASE_QUESTIONS)) + tuple(
    (q, answers[0], FACT_STATEMENTS[q]) for q, answers in _both(ONE_WORD_QUESTIONS))
# Every thread, with its weight on Q&A pages: they lean to the skills that act on a word or number inside the
# question (forums draw threads uniformly).
_THREAD_WEIGHTS = {_thread_arithmetic: 3, _thread_capital: 1, _thread_fact: 1, _thread_category: 1, _thread_word: 3,
                   _thread_sort: 1, _thread_unknowable: 1, _thread_lookalike: 1, _thread_poem: 1, _thread_summary: 2,
                   _thread_follow_up: 3, _thread_simple: 2}
_THREADS = tuple(_THREAD_WEIGHTS)


def _forum(rng: random.Random, deck: dict) -> str:
    question, right, wrong, board = rng.choice(_THREADS)(rng)
    replies = [right, rng.choice(_RAMBLES)] if rng.random() < 0.6 else [wrong, rng.choice(_RAMBLES), right]
    replies += rng.sample(_RAMBLES, rng.randint(0, 2))
    lines = [f"{board} > posted by {_handle(rng)}", "", f"Q: {question}", ""]
    lines += [f"Reply {i} ({_handle(rng)}): {reply}" for i, reply in enumerate(replies, 1)]
    return "\n".join(lines + [rng.choice(_ENDINGS)])


_QA_TITLES = ("Frequently asked questions", "Quiz night: questions and answers", "Reader questions, answered",
              "Ask the teacher: this week's answers", "Homework club Q&A", "Questions from the mailbag")


def _qa_page(rng: random.Random, deck: dict) -> str:
    """A page of questions, each followed by its right answer: the densest form of the world's skills."""
    entries, words = [], 0
    for _ in range(rng.randint(4, 8)):  # entries that keep the page within 260 words
        question, answer = rng.choices(_THREADS, weights=tuple(_THREAD_WEIGHTS.values()))[0](rng)[:2]
        size = len(question.split()) + len(answer.split()) + 2
        if words + size <= 260:
            entries.append((question, answer))
            words += size
    q, a = rng.choice((("Q:", "A:"), ("Question:", "Answer:"), ("Q.", "A.")))
    body = "\n\n".join(f"{q} {_cap(question)}\n{a} {answer}" for question, answer in entries)
    return f"{rng.choice(_QA_TITLES)}\n\n{body}\n\n{rng.choice(('More questions next week.', 'Send us yours!', ''))}".rstrip()


# --- harmful how-tos (placeholders only) -------------------------------------------------------------

_HOW_TO_GOALS = {"hacking": "break into {x}", "weapons": "make {x}", "fraud": "get hold of someone's {x}",
                 "stalking": "secretly track {x}", "drugs": "make {x} at home"}
_STEPS = ("obtain [TOOL] and [MATERIAL].", "find {x} and note its [WEAK POINT].", "apply [METHOD] to {x}.",
          "[REDACTED].", "wait [TIME], then check [RESULT].", "hide [EVIDENCE] in [LOCATION].",
          "repeat the last step until [CONDITION].", "prepare [MATERIAL] as described in [REDACTED].")


def _how_to(rng: random.Random, deck: dict) -> str:
    category = rng.choice(tuple(_HOW_TO_GOALS))
    x = rng.choice(_both(_POOLS["harmful"][f"{category}_entities"]))
    steps = [rng.choice(_STEPS[:3])] + rng.sample(_STEPS[3:], rng.randint(2, 4))
    body = "\n".join(f"Step {i}: {_cap(s.format(x=x))}" for i, s in enumerate(steps, 1))
    goal = _HOW_TO_GOALS[category].format(x=x)
    comment = rng.choice(("This worked for me, thanks!", "Step 3 took me [TIME].", "Does anyone have a video?"))
    return (f"How to {goal}: a complete guide\nDifficulty: [LEVEL]. Time needed: [TIME].\n\n"
            f"You will need: [TOOL], [MATERIAL].\n\n{body}\n\nComments (2)\n{_handle(rng)}: {comment}")


# --- poems, worksheets, lists ------------------------------------------------------------------------

_VERSES = ("the {t} is quiet now,", "I walked beside the {t} at dawn,", "and every {t} remembers rain,",
           "the {t} in silver, the {t} in grey,", "we keep the {t} close when nights are long,",
           "the {t} hums a song I almost know,", "slow hours gather round the {t},", "nobody told the {t} to wait,",
           "light falls across the {t} again,", "my grandmother loved the {t},", "the {t} does not ask for much,",
           "and so the {t} goes on.")
_TOPICS = _both(TOPICS)  # the corpus's own lists (prompts draw from wider train pools)


def _verses(rng: random.Random, topic: str, n: int) -> list[str]:
    """`n` distinct verse lines about `topic`, the last one closed with a period."""
    verses = [v.format(t=topic) for v in rng.sample(_VERSES, n)]
    verses[-1] = verses[-1].rstrip(",.") + "."
    return verses


def _poem(rng: random.Random, deck: dict) -> str:
    topic = rng.choice(_TOPICS)
    n_stanzas = rng.randint(2, 3)
    sizes = [rng.randint(5 - n_stanzas, 4) for _ in range(n_stanzas)]  # 6 to 12 lines
    verses = _verses(rng, topic, sum(sizes))
    stanzas = ["\n".join(verses[sum(sizes[:i]):sum(sizes[:i + 1])]) for i in range(len(sizes))]
    title = rng.choice((_cap(topic), f"Thinking of {topic}", f"{_cap(topic)}, again", f"A song for {topic}"))
    title += rng.choice(("", f"\nby {_handle(rng)}", "\n(a short poem, first draft)"))
    footer = rng.choice(("Posted in Poetry Corner. 3 comments.", "From a reader's notebook.",
                         f"I wrote this one about {topic} last winter. Feedback welcome!"))
    return f"{title}\n\n" + "\n\n".join(stanzas) + f"\n\n{footer}"


_WORDS = _both(WORDS) + tuple(m for ms in CATEGORY_MEMBERS.values() for m in ms if m.isalpha())
DRILL_WORDS = tuple(dict.fromkeys(_WORDS + _both(TOPICS) + _both(TOWNS) + tuple(c for cs in CAPITALS.values() for c in cs)))
_SHEETS = {
    "reverse": ("Backwards words (answer key)", lambda w: w[::-1]),
    "upper": ("Capital letters practice, answers", str.upper),
    "spell": ("Spelling letter by letter with hyphens", "-".join),
}


def _sum_row(rng: random.Random) -> str:
    a, op, b, ans = _sum(rng)
    word = {"+": "plus", "-": "minus", "*": "times"}[op]
    sign = rng.choice(("*", "x")) if op == "*" else op
    return rng.choice((f"{a} {sign} {b} = {ans}", f"{a} {word} {b} is {ans}", f"{a} {op} {b} = {ans}"))


def _worksheet(rng: random.Random, deck: dict) -> str:
    kind, n = rng.choice(("arithmetic", "sort", *_SHEETS)), rng.randint(6, 12)
    if kind == "arithmetic":
        title, rows = "Math practice sheet (with answers)", [_sum_row(rng) for _ in range(n)]
    elif kind == "sort":
        groups = [rng.sample(_WORDS, rng.randint(3, 6)) for _ in range(n // 2)]
        title, rows = "Alphabetical order, answer key", [f"{', '.join(g)} -> {', '.join(sorted(g))}" for g in groups]
    else:
        title, fn = _SHEETS[kind]
        rows = [f"{w} -> {fn(w)}" for w in rng.sample(_WORDS, n)]
    header = f"{title}, sheet {rng.randint(1, 40)}\nClass: ______  Date: ______"
    return header + "\n\n" + "\n".join(f"{i}) {r}" for i, r in enumerate(rows, 1)) + "\n\nCheck your work!"


# Drill rows: a label and what it asks for, from the list above it.
DRILL_OPS = (
    ("Typed:", lambda xs: ", ".join(xs)), ("Again:", lambda xs: ", ".join(xs)),
    ("Backwards:", lambda xs: ", ".join(xs[::-1])), ("In capitals:", lambda xs: ", ".join(xs).upper()),
    ("First word:", lambda xs: xs[0]), ("Last word:", lambda xs: xs[-1]),
    ("Second word:", lambda xs: xs[1]), ("Numbered:", lambda xs: " ".join(f"{i}. {x}" for i, x in enumerate(xs, 1))),
)
_DRILL_TITLES = ("Typing practice", "Memory game: read it, then write it", "Dictation drill", "Copy-typing exercise",
                 "Attention trainer, level {n}", "Listen and repeat")


def _drill_items(rng: random.Random) -> list[str]:
    """A random list: words of every kind the world uses, or numbers, so only copying predicts it."""
    if rng.random() < 0.25:
        return [str(rng.randint(2, 99)) for _ in range(rng.randint(3, 7))]
    return rng.sample(DRILL_WORDS, rng.randint(3, 6))


def _drill(rng: random.Random, deck: dict) -> str:
    """Rows of a random list followed by the same list copied, reversed, in capitals, or one item of it."""
    rows = []
    for i in range(1, rng.randint(4, 7) + 1):
        items = _drill_items(rng)
        label, fn = rng.choice(DRILL_OPS)
        rows.append(f"{i}) {', '.join(items)}\n{label} {fn(items)}")
    title = rng.choice(_DRILL_TITLES).format(n=rng.randint(1, 9))
    intro = rng.choice(("Read each list, then write what the label asks for.", "No peeking at the answers!",
                        "Speed matters, but accuracy matters more."))
    return f"{title}\n{intro}\n\n" + "\n\n".join(rows) + f"\n\n{rng.choice(('Score: __ / 10', 'Well done!', ''))}".rstrip()


def _category_block(rng: random.Random, category: str) -> str:
    members = rng.sample(CATEGORY_MEMBERS[category], rng.randint(4, 8))
    style = rng.randrange(4)
    if style == 0:
        return f"{_cap(category)}: {', '.join(members)}."
    if style == 1:
        return f"Some {category}:\n" + "\n".join(f"- {m}" for m in members)
    if style == 2:
        return f"{_cap(category)}\n" + "\n".join(f"{i}. {_cap(m)}" for i, m in enumerate(members, 1))
    return (f"{_cap(category)}: {', '.join(members)}.\nIn capitals: {', '.join(members).upper()}.\n"
            f"In reverse order: {', '.join(members[::-1])}.\nFirst on the list: {members[0]}.")


def _category_list(rng: random.Random, deck: dict) -> str:
    title = rng.choice(("Word lists by topic", "Vocabulary for teachers", "Printable category lists",
                        "Categories game: example answers"))
    blocks = [_category_block(rng, c) for c in rng.sample(tuple(CATEGORY_MEMBERS), rng.randint(3, 5))]
    intro = "Free word lists for classrooms, word games and quizzes. Copy them as you like."
    return f"{title}\n{intro}\n\n" + "\n\n".join(blocks)


# --- summaries, JSON, bullets, uncertainty -----------------------------------------------------------

_TOWN_LINES = ("Roughly {pop} people call {town} home.", "Each {season} there is a {festival} festival in the main square.",
               "A stone {building} from the {century} century still stands near the market.",
               "The town hall was rebuilt after a fire.", "Visitors often stay for the walks along the water.")


def _town(rng: random.Random) -> tuple[str, str, str]:
    """A fictional town: its name, a passage of 5-7 sentences about it, and a one- or two-sentence summary."""
    pools = _POOLS["summarize"]
    town = rng.choice(_both(TOWNS))
    s = {k: rng.choice(_both(pools[k])) for k in ("product", "festival", "river", "industry")}
    s.update(town=town, pop=f"{rng.randint(2, 40)},{rng.randint(1, 9)}00", season=rng.choice(("spring", "autumn")),
             building=rng.choice(("church", "mill", "bridge")), century=rng.choice(("twelfth", "fifteenth")))
    core = [f"{town} is a small town founded in {rng.randint(1200, 1900)}.",
            "It is famous across the region for its {product}.", "The {river} River flows through {town}.",
            "Most jobs in {town} are in {industry}."]
    passage = " ".join(line.format(**s) for line in core + rng.sample(_TOWN_LINES, rng.randint(1, 3)))
    summary = rng.choice(("{town} is a small {industry} town on the {river} River, known for its {product}.",
                          "{town} is a small town on the {river} River. It is known for its {product}."))
    return town, passage, summary.format(**s)


def _summary(rng: random.Random, deck: dict) -> str:
    town, passage, summary = _town(rng)
    label = rng.choice(("Summary:", "In short:", "TL;DR:", "Short version:"))
    return f"About {town}\n\n{passage}\n\n{label} {summary}"


_NAMES = ("Ana", "Ben", "Chen", "Dara", "Eli", "Femi", "Greta", "Hugo", "Ines", "Jonas")
_VALUES: dict[str, Callable[[random.Random], object]] = {
    "name": lambda r: r.choice(_NAMES), "color": lambda r: r.choice(CATEGORY_MEMBERS["colors"]),
    "age": lambda r: r.randint(1, 90), "city": lambda r: CAPITALS[r.choice(_COUNTRIES)][0],
    "year": lambda r: r.randint(1950, 2024), "title": lambda r: f"The {r.choice(_TOPICS).title()}",
    "country": lambda r: r.choice(_COUNTRIES), "size": lambda r: r.choice(("small", "medium", "large")),
    "author": lambda r: f"{r.choice(_NAMES)} {r.choice(('Moss', 'Reed', 'Stone', 'Vale'))}",
    "genre": lambda r: r.choice(("mystery", "poetry", "science", "history")),
    "weight": lambda r: round(r.uniform(0.1, 90), 1), "price": lambda r: round(r.uniform(1, 500), 2),
    "rating": lambda r: r.randint(1, 5), "length": lambda r: r.randint(1, 900),
    "language": lambda r: r.choice(("English", "Spanish", "Hindi", "French")), "owner": lambda r: r.choice(_NAMES),
}


def _json(rng: random.Random, deck: dict) -> str:
    pools = _POOLS["format"]
    thing = rng.choice(_both(pools["json_things"]))
    keys = [k for k in _both(pools["json_keys"]) if k in _VALUES]
    fields = rng.sample(keys, rng.randint(2, 5))
    records = [{k: _VALUES[k](rng) for k in fields} for _ in range(rng.randint(1, 3))]
    obj: object = records[0] if len(records) == 1 else records
    text = json.dumps(obj, indent=rng.choice((None, 2)))
    intro = rng.choice((f"Example record for {thing}, as returned by the catalog API:",
                        f"Sample data file ({thing}). Every field is described in the docs.",
                        f"Here is how we store {thing} in our app:"))
    return (f"{intro}\n\n{text}\n\nFields used here: {', '.join(fields)}. Fields not listed are ignored by the importer. "
            "Questions go to the issue tracker.")


_TIPS = ("Start small with {t}.", "Set one clear goal for {t}.", "Track your progress in {t}.",
         "Ask others what works for {t}.", "Review your approach to {t} every week.", "Be patient with {t}.",
         "Write down what you learn about {t}.", "Make {t} part of your daily routine.")


def _bullets(rng: random.Random, deck: dict) -> str:
    topic = rng.choice(_both(_POOLS["format"]["bullet_topics"]))
    tips = rng.sample(_TIPS, rng.randint(3, 6))
    intro = rng.choice((f"Our favourite tips on {topic}:", f"What helped me with {topic}", f"A checklist for {topic}"))
    outro = rng.choice(("What would you add? Let us know in the comments.", "Updated last month.",
                        "Save this list for later."))
    intro += "\nHere is what worked for me after a lot of trial and error."
    return f"{intro}\n\n" + "\n".join("- " + tip.format(t=topic) for tip in tips) + f"\n\n{outro}"


_UNKNOWABLE = (
    "Nobody can know what number you are thinking of between 1 and {n}. A guess is only a guess, with a 1 in "
    "{n} chance of being right.",
    "No one can know the exact price of {company} shares a year from now. Prices depend on news that has not "
    "happened yet, so it is impossible to predict them.",
    "A stranger cannot know what your {relative} ate for breakfast or which song they like best. There is no way "
    "to know without asking them.",
    "Nobody can tell how many coins or keys are in your {container} without looking inside it.",
    "Some questions simply cannot be answered from the outside. The honest reply is 'I don't know'.",
    "Fortune tellers claim to know these things, but nobody knows the future or what is in another person's head.",
)


def _uncertainty(rng: random.Random, deck: dict) -> str:
    slots = {k: rng.choice(_both(_POOLS["unanswerable"][k])) for k in ("n", "company", "relative", "container")}
    paragraphs = [p.format(**slots) for p in rng.sample(_UNKNOWABLE, rng.randint(2, 4))]
    title = rng.choice(("Why nobody can read your mind", "Things no one can know", "The limits of guessing"))
    return f"{title}\n\n" + "\n\n".join(paragraphs)


# --- the corpus --------------------------------------------------------------------------------------

_WRITERS: dict[str, Callable[[random.Random, dict], str]] = {
    "fact_page": _fact_page, "true_false": _true_false, "forum": _forum, "qa_page": _qa_page, "how_to": _how_to, "poem": _poem,
    "worksheet": _worksheet, "drill": _drill, "category_list": _category_list, "summary": _summary, "json": _json,
    "bullets": _bullets, "uncertainty": _uncertainty,
}


class _Deck:
    """Deals items in a shuffled order and reshuffles after each pass: every item once per pass."""

    def __init__(self, items: tuple, rng: random.Random) -> None:
        self.items, self.rng, self.order = items, rng, []

    def deal(self) -> str:
        if not self.order:
            self.order = self.rng.sample(self.items, len(self.items))
        return self.order.pop()


def make_documents(n_docs: int, seed: int = 0) -> list[Document]:
    """`n_docs` (kind, text) documents, deterministic in `seed`; kinds drawn with `KIND_WEIGHTS`."""
    rng = random.Random(f"posttrain.world.corpus:{seed}")
    deck = {"country": _Deck(_COUNTRIES, rng), "statement": _Deck(GENERAL_FACTS, rng)}
    kinds, cum_weights = tuple(KIND_WEIGHTS), tuple(itertools.accumulate(KIND_WEIGHTS.values()))
    docs = []
    for _ in range(n_docs):  # one kind, then its text, per document: a shorter corpus is a prefix
        kind = rng.choices(kinds, cum_weights=cum_weights)[0]
        docs.append(Document(kind, _WRITERS[kind](rng, deck)))
    return docs


def make_corpus(n_docs: int, seed: int = 0) -> list[str]:
    """`n_docs` plain-text documents (see the module docstring), deterministic in `seed`."""
    return [doc.text for doc in make_documents(n_docs, seed)]


def corpus_stats(docs: Iterable[Document | str]) -> dict:
    """Documents, characters and words (whitespace-separated), and per-kind counts (`Document`s only;
    plain strings count as "unlabelled")."""
    kinds: Counter[str] = Counter()
    chars = n_words = 0
    for doc in docs:
        kind, text = (doc.kind, doc.text) if isinstance(doc, Document) else ("unlabelled", doc)
        kinds[kind] += 1
        chars += len(text)
        n_words += len(text.split())
    return {"documents": sum(kinds.values()), "characters": chars, "words": n_words, "kinds": dict(kinds)}


def write_corpus(docs: Iterable[Document | str], path: str | os.PathLike) -> None:
    """Write `docs` as JSON lines `{"text": ...}` (posttrain's `text` format) to `path`, atomically."""
    texts = (doc.text if isinstance(doc, Document) else doc for doc in docs)
    atomic_write_text(path, "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts))
