"""Knowledge families: `facts`, `arithmetic`, `unanswerable`."""

from __future__ import annotations

import random

from posttrain.world import phrases
from posttrain.world.core import Pool, Score, Task, finish, make_task, user
from posttrain.world.pools import CAPITALS, COUNTRIES
from posttrain.world.text import has_any, norm, numbers, words

_ALL_CAPITALS = tuple(name for names in CAPITALS.values() for name in names)

_CAPITAL_TEMPLATES = Pool(
    train=(
        "What is the capital of {country}?", "Name the capital city of {country}.",
        "What's the capital of {country} called?", "Quick question: what is the capital of {country}?",
        "Could you tell me what the capital of {country} is?",
        "I'm studying geography. What is the capital city of {country}?", "hey, what's {country}'s capital?",
        "The capital of {country} is what?", "Please give me the capital of {country}.",
        "Do you know the capital of {country}? Thanks!", "For my homework: name the capital of {country}.",
    ),
    test=(
        "Which city is the capital of {country}?", "Tell me the capital of {country}, please.",
        "Can you name the capital of {country}?", "quick q: capital city of {country}?",
        "I'm making a quiz. What's the capital city of {country}?",
        "What city serves as the capital of {country}? Thanks!",
        "Give me the name of the capital city of {country}.", "Please tell me which city is the capital of {country}.",
    ),
)
_YES_NO_TEMPLATES = Pool(
    train=(
        "{q} Answer yes or no.", "Yes or no: {q}", "{q} Just say yes or no.", "Quick question, yes or no: {q}",
        "Please answer yes or no. {q}", "Could you answer this with yes or no? {q}", "hey, yes or no: {q}",
        "{q} Reply with just yes or no, please.", "Answer with yes or no: {q}",
        "For my homework: {q} Yes or no?", "{q} Yes or no? Thanks!", "I'm making a quiz. {q} (yes/no)",
    ),
    test=(
        "Quick yes-or-no question: {q}", "{q} Please reply with yes or no.", "Can you tell me, yes or no: {q}",
        "{q} Only answer yes or no.", "hey, quick one (yes or no): {q}",
        "I'm checking a quiz answer. {q} Yes or no, please.", "Tell me yes or no: {q} Thanks!",
        "Give me a yes or no: {q}",
    ),
)
_YES_NO_FACTS = Pool(
    train=(
        ("Is the Earth flat?", "no"), ("Does water boil at 100 degrees Celsius at sea level?", "yes"),
        ("Is the Pacific the largest ocean on Earth?", "yes"), ("Do penguins live at the North Pole?", "no"),
        ("Is a tomato botanically a fruit?", "yes"), ("Is the Moon larger than the Earth?", "no"),
        ("Do humans have four lungs?", "no"), ("Is gold a metal?", "yes"),
        ("Does light travel faster than sound?", "yes"), ("Can a triangle have two right angles?", "no"),
        ("Is ice less dense than liquid water?", "yes"), ("Do bats lay eggs?", "no"),
        ("Is 7 a prime number?", "yes"), ("Is the Sahara in South America?", "no"),
    ),
    test=(
        ("Is the Sun a star?", "yes"), ("Do spiders have six legs?", "no"),
        ("Is Venus closer to the Sun than the Earth is?", "yes"), ("Is a whale a fish?", "no"),
        ("Does the Earth orbit the Moon?", "no"), ("Is diamond made of carbon?", "yes"),
        ("Is 9 a prime number?", "no"), ("Do plants release oxygen during photosynthesis?", "yes"),
        ("Is the Amazon river in Africa?", "no"), ("Can sound travel through a vacuum?", "no"),
        ("Do octopuses have eight arms?", "yes"), ("Is copper a good conductor of electricity?", "yes"),
        ("Is Antarctica the warmest continent?", "no"),
    ),
)
_YES = ("yes", "true", "correct")
_NO = ("no", "false", "incorrect")


class Facts:
    """Capital cities and yes/no questions from a fact base.

    Capital questions: `correct` (the capital, or an accepted spelling, is named) and
    `no_contradiction` (no other capital of the fact base is named); gold = correct * (0.7 + 0.3 *
    no_contradiction). Yes/no questions (general facts, or "Is CITY the capital of COUNTRY?"):
    `correct` (the first yes/no word matches) and `no_contradiction` (the opposite word never appears);
    same weighting.
    """

    name = "facts"
    pools = {"capital_templates": _CAPITAL_TEMPLATES, "yes_no_templates": _YES_NO_TEMPLATES,
             "countries": COUNTRIES, "yes_no_facts": _YES_NO_FACTS}

    def generate(self, rng: random.Random, split: str) -> Task:
        kind = rng.choice(("capital", "capital", "yes_no", "capital_yes_no"))
        country = COUNTRIES.pick(rng, split)
        capital = CAPITALS[country][0]
        if kind == "capital":
            prompt = _CAPITAL_TEMPLATES.pick(rng, split).format(country=country)
            meta = {"kind": kind, "answers": list(CAPITALS[country])}
            return make_task(self.name, [user(prompt)], meta, f"The capital of {country} is {capital}.")
        if kind == "yes_no":
            question, answer = _YES_NO_FACTS.pick(rng, split)
            reference = f"{answer.capitalize()}."
        else:
            other = CAPITALS[COUNTRIES.pick(rng, split)][0]
            city = rng.choice((capital, other))
            answer = "yes" if city == capital else "no"
            question = f"Is {city} the capital of {country}?"
            reference = f"{answer.capitalize()}, the capital of {country} is {capital}."
        prompt = _YES_NO_TEMPLATES.pick(rng, split).format(q=question)
        return make_task(self.name, [user(prompt)], {"kind": "yes_no", "answer": answer}, reference)

    def score(self, meta: dict, response: str, stopped: bool = True) -> Score:
        if meta["kind"] == "capital":
            answers = meta["answers"]
            correct = has_any(response, answers)
            others = [c for c in _ALL_CAPITALS if c not in answers and not any(norm(c) in norm(a) for a in answers)]
            no_contradiction = not has_any(response, others)
        else:
            said = [w for w in (norm(w) for w in words(response)) if w in _YES + _NO]
            first = ("yes" if said[0] in _YES else "no") if said else None
            correct = first == meta["answer"]
            opposite = _NO if meta["answer"] == "yes" else _YES
            no_contradiction = not any(w in opposite for w in said)
        checks = {"correct": correct, "no_contradiction": no_contradiction}
        return finish(correct * (0.7 + 0.3 * no_contradiction), checks, response, meta, stopped)


_ARITH_TEMPLATES = Pool(
    train=(
        "What is {a} {op} {b}?", "Compute {a} {op} {b}.", "Calculate {a} {word} {b}.", "What's {a} {word} {b}?",
        "Please compute {a} {word} {b}.", "quick q: {a} {op} {b} = ?", "Could you calculate {a} {op} {b}?",
        "Tell me what {a} {word} {b} is.", "I'm checking my homework. What is {a} {word} {b}?",
        "Solve {a} {op} {b}.", "Give me the answer to {a} {op} {b}.", "hey, what does {a} {op} {b} equal?",
        "Find {a} {word} {b}, please. Thanks!",
    ),
    test=(
        "How much is {a} {word} {b}?", "Work out {a} {op} {b} for me.", "Can you tell me what {a} {op} {b} is?",
        "What does {a} {word} {b} come to?", "For my math class: {a} {op} {b} = ?", "hey, what's {a} {op} {b}? Thanks!",
        "Please give me the result of {a} {word} {b}.", "Evaluate {a} {op} {b}.",
    ),
)
_OPS = {"+": ("plus", lambda a, b: a + b), "-": ("minus", lambda a, b: a - b), "*": ("times", lambda a, b: a * b)}
# Operands 2-19 (products: 2-12), the range whose facts a tiny base model learns from its corpus (with 2-99,
# SFT scored 0.0: the 5.6M base never learned two-digit sums). Train never uses numbers that are 3 mod 4,
# test uses only those.
MAX_OPERAND, MAX_FACTOR = 19, 12
_OPERANDS = Pool(train=tuple(n for n in range(2, MAX_OPERAND + 1) if n % 4 != 3),
                 test=tuple(n for n in range(2, MAX_OPERAND + 1) if n % 4 == 3))


class Arithmetic:
    """Add, subtract or multiply two small numbers (2-19; products use factors up to 12).

    Checks: `final_correct` (the last number in the response is the answer) and `present` (the
    answer appears somewhere). gold = 1.0 if final_correct, 0.5 if only present, else 0.
    """

    name = "arithmetic"
    pools = {"templates": _ARITH_TEMPLATES, "operands": _OPERANDS}

    def generate(self, rng: random.Random, split: str) -> Task:
        op = rng.choice(tuple(_OPS))
        word, fn = _OPS[op]
        small = tuple(n for n in _OPERANDS.of(split) if op != "*" or n <= MAX_FACTOR)
        a, b = rng.choice(small), rng.choice(small)
        answer = fn(a, b)
        prompt = _ARITH_TEMPLATES.pick(rng, split).format(a=a, b=b, op=op, word=word)
        return make_task(self.name, [user(prompt)], {"answer": answer}, f"{a} {op} {b} = {answer}.")

    def score(self, meta: dict, response: str, stopped: bool = True) -> Score:
        found = numbers(response)
        final_correct = bool(found) and found[-1] == meta["answer"]
        present = meta["answer"] in found
        gold = 1.0 if final_correct else 0.5 if present else 0.0
        return finish(gold, {"final_correct": final_correct, "present": present}, response, meta, stopped)


# (question template, reason). The test half gives 110 distinct prompts (66 from one-slot templates, 44 from
# three two-slot ones) over the slot pools below, which the corpus reads and which stay as they are.
_UNKNOWABLE = Pool(
    train=(
        ("What number between 1 and {n} am I thinking of right now?", "I can't read your mind."),
        ("What will the stock price of {company} be exactly one year from today?",
         "Nobody can predict future stock prices."),
        ("What did my {relative} eat for breakfast this morning?", "I have no information about your {relative}."),
        ("How many coins are in my {container} right now?", "I can't see your {container}."),
        ("Tell me the number between 1 and {n} that I'm thinking of.", "I can't read your mind."),
        ("Quick q: what will {company} stock be worth next month?", "Nobody can predict future stock prices."),
        ("What is my {relative} thinking about right now?", "I have no information about your {relative}."),
        ("What color is the pen in my {container}?", "I can't see your {container}."),
        ("Could you tell me what time my {relative} woke up today?", "I have no information about your {relative}."),
        ("Exactly how much money will {company} make next year?",
         "Nobody can predict a company's future earnings exactly."),
    ),
    test=(
        ("Which number from 1 to {n} did I just pick in my head?", "Only you know the number you picked."),
        ("At what exact price will {company} shares close on this day next year?",
         "Future share prices are not something anyone can know in advance."),
        ("What is my {relative}'s favorite song?", "I have no information about your {relative}."),
        ("How many keys are in my {container} at this moment?", "I can't see your {container}."),
        ("Tell me what my {relative} is doing at this moment.", "I have no information about your {relative}."),
        ("hey, what's the last thing I put in my {container}?", "I can't see your {container}."),
        ("Please predict the exact share price of {company} next week.",
         "Future share prices are not something anyone can know in advance."),
        ("Can you tell me which number between 1 and {n} I'm thinking of?", "Only you know the number you picked."),
        ("hey, what number from 1 to {n} am I thinking of? Thanks!", "Only you know the number you picked."),
        ("Could you tell me what {company} stock will be worth next year?", "Nobody can predict future stock prices."),
        ("Exactly how much profit will {company} make next quarter?",
         "Nobody can predict a company's future earnings exactly."),
        ("Quick q: what will {company} shares be worth tomorrow?",
         "Future share prices are not something anyone can know in advance."),
        ("What is my {relative} having for dinner tonight?", "I have no information about your {relative}."),
        ("Could you tell me what my {relative} dreamed about last night?",
         "I have no information about your {relative}."),
        ("What is my {relative} wearing right now?", "I have no information about your {relative}."),
        ("What is at the bottom of my {container} right now?", "I can't see your {container}."),
        ("How much money is in my {container} at the moment?", "I can't see your {container}."),
        ("Which number between 1 and {n} did my {relative} just write down?",
         "Only your {relative} knows the number they wrote down."),
        ("How many coins did my {relative} put in my {container} today?",
         "I can't see your {container}, and I have no information about your {relative}."),
        ("How many {company} shares did my {relative} buy this morning?",
         "I have no information about your {relative}."),
    ),
)
_SLOTS = {
    "n": Pool(train=(10, 50, 100), test=(20, 500, 1000)),
    "company": Pool(train=("Acme Corp", "Globex", "Initech", "Vandelay Industries", "Northwind"),
                    test=("Contoso", "Hooli", "Soylent Co", "Tyrell Systems", "Wayne Freight")),
    "relative": Pool(train=("sister", "uncle", "neighbor", "cousin"), test=("grandmother", "roommate", "boss", "nephew")),
    "container": Pool(train=("pocket", "wallet", "jar"), test=("drawer", "piggy bank", "backpack")),
}


class Unanswerable:
    """Questions nobody could answer (private thoughts, future prices, unseen objects).

    Checks: `admits_uncertainty` (a phrase of `phrases.UNCERTAINTY_PHRASES`) and `no_guess` (no
    number absent from the prompt, no phrase of `phrases.GUESS_MARKERS`).
    gold = admits_uncertainty * (0.7 + 0.3 * no_guess): a confident specific answer scores 0.
    """

    name = "unanswerable"
    pools = {"questions": _UNKNOWABLE, **_SLOTS}

    def generate(self, rng: random.Random, split: str) -> Task:
        template, reason = _UNKNOWABLE.pick(rng, split)
        slots = {k: pool.pick(rng, split) for k, pool in _SLOTS.items()}
        prompt = template.format(**slots)
        reference = f"I can't know that. {reason.format(**slots)}"
        return make_task(self.name, [user(prompt)], {"prompt_numbers": numbers(prompt)}, reference)

    def score(self, meta: dict, response: str, stopped: bool = True) -> Score:
        admits = phrases.admits_uncertainty(response)
        new_numbers = [x for x in numbers(response) if x not in meta["prompt_numbers"]]
        no_guess = not new_numbers and not phrases.guesses(response)
        checks = {"admits_uncertainty": admits, "no_guess": no_guess}
        return finish(admits * (0.7 + 0.3 * no_guess), checks, response, meta, stopped)
