"""Writing families: `poem`, `summarize`, `format` (one word, JSON, bullet list)."""

from __future__ import annotations

import json
import random
import re

from posttrain.world.core import Pool, Score, Task, finish, make_task, user
from posttrain.world.pools import ONE_WORD_QUESTIONS, PROMPT_WORDS, WORDS
from posttrain.world.text import has_any, has_word, items, lines, norm, sentences, words


def _closeness(got: int, want: int) -> float:
    """1.0 when `got == want`, falling linearly to 0 at a difference of `want`."""
    return max(0.0, 1.0 - abs(got - want) / want)


_POEM_TEMPLATES = Pool(
    train=("Write a short poem of {n} lines about {topic}.", "Compose a {n}-line poem about {topic}.",
           "Give me a poem about {topic} that is exactly {n} lines long.",
           "Please write a {n}-line poem about {topic}.",
           "Can you write me a poem about {topic}? Make it {n} lines.",
           "Hey, write a little poem about {topic}, {n} lines long.",
           "For a class project: a {n}-line poem about {topic}, please.",
           "Write {n} short lines of poetry about {topic}. Thanks!",
           "A poem about {topic} in exactly {n} lines, please."),
    test=("Could you write {n} lines of verse on the subject of {topic}?", "I need a tiny poem ({n} lines) about {topic}.",
          "Can you compose a short poem about {topic} with {n} lines?",
          "Hi! I'd love a {n}-line poem on {topic}. Thanks!",
          "For my journal: write a poem of {n} lines about {topic}."),
)
TOPICS = Pool(
    train=("autumn", "rain", "ocean", "coffee", "winter", "moon", "river", "forest", "garden", "city", "bread",
           "stars", "wind", "morning", "candle", "library", "harbor"),
    test=("lantern", "owl", "snow", "bicycle", "desert", "thunder", "orchard", "lighthouse", "kettle", "sunrise",
          "glacier", "market"),
)
# Poem prompts also take train-category members as topics (words the base model knows), so SFT learns to write
# about the prompt's topic rather than recall a few memorised poems. The corpus keeps `TOPICS`.
_PROMPT_TOPICS = Pool(train=TOPICS.train + tuple(w for w in PROMPT_WORDS.train[len(WORDS.train):]
                                                  if w not in TOPICS.test), test=TOPICS.test)
_POEM_LINES = ("quiet as the falling light,", "I keep the {t} close to me,", "the hours fold like paper,",
               "soft winds carry it away,", "a small song in the dark,", "we listen, and we stay,")


class Poem:
    """"Write a poem of N lines about TOPIC" (N in 2..5).

    Checks: `mentions_topic` (the topic word or its plural), `line_count` (non-empty lines; 1.0 when
    exactly N, linear partial credit), `short_lines` (there are lines and none exceeds 12 words: no
    prose or rambling). gold = mentions_topic * (0.3 + 0.5 * line_count + 0.2 * short_lines): an
    off-topic text or a refusal scores 0.
    """

    name = "poem"
    pools = {"templates": _POEM_TEMPLATES, "topics": _PROMPT_TOPICS}

    def generate(self, rng: random.Random, split: str) -> Task:
        n, topic = rng.randint(2, 5), _PROMPT_TOPICS.pick(rng, split)
        # The topic opens the poem as written in the prompt (" kettle", not "Kettle"): the same token to copy.
        body = [f"the {topic} at the edge of day,"] + rng.sample(_POEM_LINES, n - 1)
        body[-1] = body[-1].rstrip(",") + "."
        reference = "\n".join(line.format(t=topic) for line in body)
        prompt = _POEM_TEMPLATES.pick(rng, split).format(n=n, topic=topic)
        return make_task(self.name, [user(prompt)], {"n": n, "topic": topic}, reference)

    def score(self, meta: dict, response: str, stopped: bool = True) -> Score:
        rows = lines(response)
        checks = {
            "line_count": _closeness(len(rows), meta["n"]),
            "mentions_topic": has_any(response, (meta["topic"], meta["topic"] + "s")),
            "short_lines": bool(rows) and all(len(words(r)) <= 12 for r in rows),
        }
        gold = checks["mentions_topic"] * (0.3 + 0.5 * checks["line_count"] + 0.2 * checks["short_lines"])
        return finish(gold, checks, response, meta, stopped)


_SUMMARY_TEMPLATES = Pool(
    train=("Summarize the following passage in {k} {sentences}.\n\n{passage}",
           "Read this and sum it up in {k} {sentences}:\n\n{passage}",
           "Please summarize this in {k} {sentences}:\n\n{passage}",
           "Can you sum up the text below in {k} {sentences}?\n\n{passage}",
           "{passage}\n\nSummarize that in {k} {sentences}.",
           "Hey, give me a {k}-sentence summary of this:\n\n{passage}",
           "For my notes: summarize the passage below in {k} {sentences}.\n\n{passage}",
           "Write a summary of the following in exactly {k} {sentences}.\n\n{passage}\n\nThanks!",
           "{passage}\n\nWhat's the gist? Answer in {k} {sentences}."),
    test=("{passage}\n\nGive me a {k}-sentence summary of the text above.",
          "Here is a short text.\n\n{passage}\n\nCondense it into exactly {k} {sentences}.",
          "Could you summarize the following in {k} {sentences}?\n\n{passage}",
          "{passage}\n\nPlease boil this down to {k} {sentences}.",
          "Hi! Can you shorten this to {k} {sentences}?\n\n{passage}"),
)
TOWNS = Pool(
    train=("Brindlewood", "Ashcombe", "Fernhollow", "Kestrel Bay", "Millbrook", "Oakridge", "Stonefield", "Larkspur"),
    test=("Marrowgate", "Quillon", "Thistledown", "Wrenford", "Cobalt Springs", "Eldermoor"),
)
# Summary prompts name many more train towns than the corpus's passages do (names made of two parts), so SFT
# learns to copy the town from the passage; the test towns stay the six above.
_PROMPT_TOWNS = Pool(
    train=TOWNS.train + tuple(a + b for a in ("Ash", "Birch", "Cold", "Elm", "Fair", "Glen", "High", "Lake", "North",
                                               "Red", "Rose", "West")
                               for b in ("ford", "brook", "field", "haven", "ton", "wick", "bury", "dale")),
    test=TOWNS.test,
)
_FACT_SLOTS = {
    "product": Pool(train=("cheese", "pottery", "lace", "clocks", "cider"), test=("glassware", "honey", "kites", "wool")),
    "festival": Pool(train=("lantern", "harvest", "kite"), test=("music", "boat", "pumpkin")),
    "river": Pool(train=("Wend", "Silverrun", "Oxley"), test=("Marr", "Tallow", "Brisk")),
    "industry": Pool(train=("farming", "fishing", "tourism"), test=("weaving", "mining", "printing")),
}
_FACTS = ("It is best known for its {product}.", "About {pop} people live there today.",
          "Every {season}, the town holds a {festival} festival.", "The {river} River runs through the middle of {town}.",
          "Its oldest building is a stone {building} from the {century} century.", "Most residents work in {industry}.")


class Summarize:
    """Summarize a generated passage of 4-6 facts about a fictional town in K sentences (K in 1..3).

    Checks: `mentions_entity` (the town's name), `sentence_count` (1.0 when exactly K, linear partial
    credit), `shorter` (non-empty and shorter than the passage).
    gold = mentions_entity * (0.5 * sentence_count + 0.5 * shorter): a summary must name the town.
    The passage's sentence templates are shared; the instructions and every filled-in entity are split.
    """

    name = "summarize"
    pools = {"templates": _SUMMARY_TEMPLATES, "towns": _PROMPT_TOWNS, **_FACT_SLOTS}

    def generate(self, rng: random.Random, split: str) -> Task:
        town = _PROMPT_TOWNS.pick(rng, split)
        slots = {k: pool.pick(rng, split) for k, pool in _FACT_SLOTS.items()}
        slots.update(town=town, pop=f"{rng.randint(2, 40)},{rng.randint(1, 9)}00",
                     season=rng.choice(("spring", "summer", "autumn", "winter")),
                     building=rng.choice(("church", "mill", "bridge", "tower")),
                     century=rng.choice(("twelfth", "fifteenth", "eighteenth")))
        facts = [f"{town} is a small town founded in {rng.randint(1200, 1900)}."]
        facts += [f.format(**slots) for f in rng.sample(_FACTS, rng.randint(3, 5))]
        passage, k = " ".join(facts), rng.randint(1, 3)
        prompt = _SUMMARY_TEMPLATES.pick(rng, split).format(
            k=k, passage=passage, sentences="sentence" if k == 1 else "sentences")
        meta = {"k": k, "entity": town, "passage_chars": len(passage)}
        return make_task(self.name, [user(prompt)], meta, " ".join(facts[:k]))

    def score(self, meta: dict, response: str, stopped: bool = True) -> Score:
        text = response.strip()
        checks = {
            "sentence_count": _closeness(len(sentences(text)), meta["k"]),
            "mentions_entity": has_word(text, meta["entity"]),
            "shorter": 0 < len(text) < meta["passage_chars"],
        }
        gold = checks["mentions_entity"] * (0.5 * checks["sentence_count"] + 0.5 * checks["shorter"])
        return finish(gold, checks, response, meta, stopped)


_JSON_KEYS = Pool(train=("name", "color", "age", "city", "year", "title", "country", "size"),
                  test=("author", "genre", "weight", "price", "rating", "length", "language", "owner"))
_JSON_THINGS = Pool(train=("a pet", "a car", "a city", "a song", "a movie"),
                    test=("a book", "a planet", "a restaurant", "a river"))
_BULLET_TOPICS = Pool(train=("healthy sleep", "saving money", "learning a language", "staying focused", "eating well",
                             "daily exercise", "studying for exams", "making friends", "reading more books",
                             "drinking enough water", "keeping a tidy desk", "waking up early"),
                      test=("planning a trip", "keeping plants alive", "writing clearly", "cooking rice",
                            "learning to swim", "practicing guitar", "growing tomatoes", "public speaking"))
_BULLETS = ("Start small with {t}.", "Set one clear goal for {t}.", "Track your progress in {t}.",
            "Ask others what works for {t}.", "Review your approach to {t} each week.", "Be patient with {t}.")
_FORMAT_TEMPLATES = {
    "one_word": Pool(train=("Answer with a single word: {q}", "One word only. {q}", "{q} Answer in one word.",
                            "Please answer in just one word. {q}", "Quick one, single word please: {q}",
                            "Hey, one-word answer only: {q}", "{q} Reply with one word, please.",
                            "Can you answer this in one word? {q}"),
                     test=("Reply in exactly one word. {q}", "{q} Use just one word.",
                           "Could you answer with only one word? {q}", "{q} One word, please. Thanks!")),
    "json": Pool(train=("Return only a JSON object describing {thing} with the keys {keys}.",
                        "Give me valid JSON for {thing}, using exactly these keys: {keys}.",
                        "Please write a JSON object about {thing} with the keys {keys} and no others.",
                        "Can you describe {thing} in JSON? Use only the keys {keys}.",
                        "Make a JSON object for {thing} with exactly the keys {keys}.",
                        "Hey, I need JSON for {thing} with the keys {keys} and nothing else.",
                        "For a test file: one JSON object about {thing} with only the keys {keys}.",
                        "Output only JSON describing {thing}, with the keys {keys}. Thanks!"),
                 test=("Output a JSON object (and nothing else) about {thing}; its keys must be {keys}.",
                       "Describe {thing} as JSON with the fields {keys} and no others.",
                       "Could you give me a JSON object for {thing} with just the keys {keys}?",
                       "I need {thing} as a JSON object, keys {keys} only, please.")),
    "bullets": Pool(train=("Give {n} bullet points about {topic}.", "Write a bulleted list of {n} tips on {topic}.",
                           "Please list {n} tips about {topic} as bullet points.",
                           "Can you give me {n} bullet points on {topic}?",
                           "Hey, {n} quick bullet points on {topic}, please.",
                           "For a handout: {n} bullet-point tips on {topic}.",
                           "List {n} tips for {topic}, one bullet each. Thanks!",
                           "I need a bullet list with {n} tips on {topic}."),
                    test=("I want exactly {n} bullets on {topic}, please.", "Make a {n}-item bullet list about {topic}.",
                          "Could you write {n} bullet points about {topic}?",
                          "For my notes: a bulleted list of {n} tips on {topic}, please.")),
}
_BULLET_LINE = re.compile(r"^[-*\u2022]\s+\S")


def _parse_json(text: str) -> dict | None:
    body = re.sub(r"^```(?:json)?\s*|\s*```$", "", text.strip())
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class Format:
    """Output-format requests: one word, a JSON object with given keys, or a bullet list of N bullets.

    one_word: `one_word` (exactly one word, 0.6) and `correct` (an accepted answer, 0.4).
    json: `parses` (the response, optionally in a ```json fence, is a JSON object, 0.4), `has_keys`
    (fraction of the required keys present, 0.4), `no_extra_keys` (parsed, and no other keys, 0.2).
    bullets: `bullet_count` (1.0 when exactly N bullet lines, linear partial credit, 0.6) and
    `only_bullets` (there are bullets and every non-empty line is one, 0.4).
    gold = the weighted sum of the kind's checks.
    """

    name = "format"
    pools = {"one_word": ONE_WORD_QUESTIONS, "json_keys": _JSON_KEYS, "json_things": _JSON_THINGS,
             "bullet_topics": _BULLET_TOPICS, **{f"templates_{k}": p for k, p in _FORMAT_TEMPLATES.items()}}

    def generate(self, rng: random.Random, split: str) -> Task:
        kind = rng.choice(tuple(_FORMAT_TEMPLATES))
        template = _FORMAT_TEMPLATES[kind].pick(rng, split)
        if kind == "one_word":
            question, answers = ONE_WORD_QUESTIONS.pick(rng, split)
            meta, reference = {"answers": list(answers)}, answers[0].capitalize()
            prompt = template.format(q=question)
        elif kind == "json":
            keys = _JSON_KEYS.sample(rng, split, rng.randint(2, 3))
            meta = {"keys": keys}
            reference = json.dumps({k: f"example {k}" for k in keys})
            prompt = template.format(thing=_JSON_THINGS.pick(rng, split), keys=", ".join(f'"{k}"' for k in keys))
        else:
            n, topic = rng.randint(2, 5), _BULLET_TOPICS.pick(rng, split)
            meta = {"n": n}
            reference = "\n".join("- " + b.format(t=topic) for b in rng.sample(_BULLETS, n))
            prompt = template.format(n=n, topic=topic)
        return make_task(self.name, [user(prompt)], {"kind": kind, **meta}, reference)

    def score(self, meta: dict, response: str, stopped: bool = True) -> Score:
        if meta["kind"] == "one_word":
            parsed = items(response)
            checks = {"one_word": len(words(response)) == 1,
                      "correct": len(parsed) == 1 and norm(parsed[0]) in meta["answers"]}
            gold = 0.6 * checks["one_word"] + 0.4 * checks["correct"]
        elif meta["kind"] == "json":
            obj = _parse_json(response)
            keys = set(obj or {})
            checks = {"parses": obj is not None, "has_keys": len(keys & set(meta["keys"])) / len(meta["keys"]),
                      "no_extra_keys": obj is not None and keys <= set(meta["keys"])}
            gold = 0.4 * checks["parses"] + 0.4 * checks["has_keys"] + 0.2 * checks["no_extra_keys"]
        else:
            rows = lines(response)
            bullets = [r for r in rows if _BULLET_LINE.match(r)]
            checks = {"bullet_count": _closeness(len(bullets), meta["n"]),
                      "only_bullets": bool(bullets) and len(bullets) == len(rows)}
            gold = 0.6 * checks["bullet_count"] + 0.4 * checks["only_bullets"]
        return finish(gold, checks, response, meta, stopped)
