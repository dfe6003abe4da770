"""Instruction-following families: `ifeval` (verifiable constraints in the user turn) and
`system_rule` (one constraint set by a system message)."""

from __future__ import annotations

import random
import string
from typing import Any

from posttrain.data.types import Message
from posttrain.world.core import Pool, Score, Task, finish, make_task, user
from posttrain.world.pools import INSTRUCTION_QUESTIONS
from posttrain.world.text import has_any, norm, words

_CUE_WORDS = Pool(train=("done", "indeed", "friend", "thanks", "sure", "okay"),
                  test=("cheers", "finally", "certainly", "alright", "noted"))
# constraint -> phrasing in the user turn (ifeval) and in a system message (system_rule)
_USER_PHRASES = {
    "max_words": Pool(train=("Answer in at most {w} words.", "Use no more than {w} words.",
                             "Please answer in {w} words or less.", "Limit your answer to {w} words.",
                             "Max {w} words, please."),
                      test=("Keep your reply to {w} words or fewer.", "Could you answer using {w} words at most?",
                            "No more than {w} words, thanks.")),
    "end_with": Pool(train=("End your answer with the word '{x}'.", "Please finish your reply with the word '{x}'.",
                            "The last word of your answer should be '{x}'.", "Make sure your answer ends with '{x}'.",
                            "Close your answer with the word '{x}', please."),
                     test=("Make '{x}' the very last word of your reply.", "Could you end your reply with the word '{x}'?",
                           "Wrap up your answer with the word '{x}'.")),
    "start_with": Pool(train=("Start your answer with the word '{x}'.", "Please begin your reply with the word '{x}'.",
                              "The first word of your answer should be '{x}'.", "Open your answer with '{x}'."),
                       test=("Your reply must begin with the word '{x}'.", "Could you start your reply with the word '{x}'?",
                             "Kick off your answer with the word '{x}', please.")),
    "no_letter": Pool(train=("Do not use the letter '{c}' anywhere in your answer.", "Please avoid the letter '{c}' in your reply.",
                             "Write your answer without the letter '{c}'.", "Your answer must not contain the letter '{c}'."),
                      test=("Avoid the letter '{c}' entirely.", "Could you answer without using the letter '{c}'?",
                            "No '{c}' anywhere in your reply, please.")),
    "lower": Pool(train=("Write your answer in lowercase letters only.", "Please answer using only lowercase letters.",
                         "Use lowercase only, no capitals.", "Reply in all lowercase."),
                  test=("No capital letters, please.", "Could you write your reply all in lower case?",
                        "Keep every letter of your answer lowercase.")),
    "upper": Pool(train=("Write your answer in capital letters only.", "Please answer in all caps.",
                         "Use only uppercase letters in your reply.", "Reply in ALL CAPS."),
                  test=("Reply entirely in upper case.", "Could you write your whole answer in capitals?",
                        "Every letter of your reply should be uppercase.")),
}
_SYSTEM_PHRASES = {
    "max_words": Pool(train=("You are a terse assistant. Never use more than {w} words.",
                             "Keep every reply to at most {w} words.",
                             "You are a helpful assistant. Answer in no more than {w} words.",
                             "Rule: replies may not exceed {w} words."),
                      test=("Every reply you give must be {w} words or shorter.",
                            "You are a brief assistant. Stay within {w} words per reply.",
                            "Style guide: limit all answers to {w} words or fewer.")),
    "end_with": Pool(train=("You are a friendly assistant. Always end your reply with the word '{x}'.",
                            "House rule: the last word of every reply is '{x}'.",
                            "Always finish your answers with the word '{x}'.",
                            "Style guide: end each reply with the word '{x}'."),
                     test=("Finish each of your messages with the word '{x}'.",
                           "You are a cheerful assistant. Your replies always end with the word '{x}'.",
                           "Rule: close every answer with the word '{x}'.")),
    "start_with": Pool(train=("You are a helpful assistant. Always begin your reply with the word '{x}'.",
                              "Start every answer with the word '{x}'.",
                              "House rule: each reply opens with the word '{x}'.",
                              "Style guide: your first word is always '{x}'."),
                       test=("The first word of every reply must be '{x}'.",
                             "You are a polite assistant. Begin each answer with the word '{x}'.",
                             "Rule: open every reply with the word '{x}'.")),
    "no_letter": Pool(train=("You are a playful assistant who never uses the letter '{c}'.",
                             "Never use the letter '{c}' in your replies.",
                             "Style guide: the letter '{c}' must not appear in any answer.",
                             "Rule: avoid the letter '{c}' completely."),
                      test=("House rule: the letter '{c}' is banned from your replies.",
                            "You are a careful assistant. Your answers never contain the letter '{c}'.",
                            "Do not write the letter '{c}' in any reply.")),
    "lower": Pool(train=("You are a calm assistant. Write only in lowercase letters.",
                         "Always reply in lowercase, with no capital letters.",
                         "House rule: every reply is written in lower case.",
                         "Rule: use lowercase letters only."),
                  test=("Style guide: all of your output is lower case.",
                        "You are a quiet assistant. Never use capital letters.",
                        "Write every answer entirely in lowercase.")),
    "upper": Pool(train=("You are an excited assistant. Write only in capital letters.",
                         "Always reply in capital letters only.",
                         "House rule: every reply is written in upper case.",
                         "Rule: use uppercase letters only."),
                  test=("Style guide: all of your output is upper case.",
                        "You are a loud assistant. Never use lowercase letters.",
                        "Write every answer entirely in capitals.")),
}
_COMMON_LETTERS = "etaoinsrhdlucmfywgpb"


def _build(rng: random.Random, split: str, names: list[str], reference: str) -> tuple[dict, str]:
    """Parameters for the constraints `names` and the reference rewritten to satisfy all of them."""
    params: dict = {}
    if "start_with" in names:
        params["start_with"] = _CUE_WORDS.pick(rng, split)
        reference = f"{params['start_with'].capitalize()}: {reference}"
    if "end_with" in names:
        params["end_with"] = rng.choice([w for w in _CUE_WORDS.of(split) if w != params.get("start_with")])
        reference = f"{reference.rstrip('.')}, {params['end_with']}."
    if "lower" in names:
        reference = reference.lower()
    if "upper" in names:
        reference = reference.upper()
    if "no_letter" in names:
        absent = [c for c in _COMMON_LETTERS if c not in reference.lower()]
        params["no_letter"] = absent[0] if absent else rng.choice([c for c in string.ascii_lowercase if c not in reference.lower()])
    if "max_words" in names:
        params["max_words"] = len(words(reference)) + rng.randint(0, 3)
    return params, reference


def _check(name: str, param: Any, response: str) -> float:
    """One constraint's score in [0, 1] (max_words gives linear partial credit up to twice the limit)."""
    said, letters = [norm(w) for w in words(response)], [c for c in response if c.isalpha()]
    if name == "max_words":
        return 1.0 if len(said) <= param else max(0.0, 1.0 - (len(said) - param) / param)
    if name == "end_with":
        return float(bool(said) and said[-1] == param)
    if name == "start_with":
        return float(bool(said) and said[0] == param)
    if name == "no_letter":
        return float(param not in response.lower())
    if name == "lower":
        return float(bool(letters) and not any(c.isupper() for c in letters))
    return float(bool(letters) and not any(c.islower() for c in letters))  # upper


def _score(meta: dict, response: str, stopped: bool) -> Score:
    checks: dict[str, float | bool] = {name: _check(name, meta["params"].get(name), response) for name in meta["constraints"]}
    checks["answered"] = has_any(response, meta["answers"])
    constraint_mean = sum(checks[name] for name in meta["constraints"]) / len(meta["constraints"])
    gold = checks["answered"] * (0.3 + 0.7 * constraint_mean)
    return finish(gold, checks, response, meta, stopped)


def _params_for_prompt(params: dict) -> dict:
    return {"w": params.get("max_words"), "c": params.get("no_letter"),
            "x": params.get("start_with") or params.get("end_with")}


class IFEval:
    """A simple question plus one or two verifiable constraints (max words, start/end with a word,
    avoid a letter, lower case, upper case).

    Checks: one per constraint (0/1; max_words partial), and `answered` (the question's answer word).
    gold = answered * (0.3 + 0.7 * mean(constraint checks)): obeying the format without answering
    (an empty reply, a refusal) scores 0.
    """

    name = "ifeval"
    pools = {"questions": INSTRUCTION_QUESTIONS, "cue_words": _CUE_WORDS, **{f"phrase_{k}": p for k, p in _USER_PHRASES.items()}}

    def generate(self, rng: random.Random, split: str) -> Task:
        question, answers, reference = INSTRUCTION_QUESTIONS.pick(rng, split)
        names = rng.sample(tuple(_USER_PHRASES), rng.randint(1, 2))
        if {"lower", "upper"} <= set(names) or {"start_with", "end_with"} <= set(names):
            names = names[:1]  # contradictory case pair, or two cue-word slots in one prompt
        params, reference = _build(rng, split, names, reference)
        parts = [question] + [_USER_PHRASES[n].pick(rng, split).format(**_params_for_prompt(params)) for n in names]
        meta = {"constraints": names, "params": params, "answers": list(answers)}
        return make_task(self.name, [user(" ".join(parts))], meta, reference)

    def score(self, meta: dict, response: str, stopped: bool = True) -> Score:
        return _score(meta, response, stopped)


class SystemRule:
    """A system message sets one rule (same constraints as `ifeval`); the user asks a simple question.

    Checks and weights as `ifeval`: gold = answered * (0.3 + 0.7 * rule check).
    """

    name = "system_rule"
    pools = {"questions": INSTRUCTION_QUESTIONS, "cue_words": _CUE_WORDS, **{f"rule_{k}": p for k, p in _SYSTEM_PHRASES.items()}}

    def generate(self, rng: random.Random, split: str) -> Task:
        question, answers, reference = INSTRUCTION_QUESTIONS.pick(rng, split)
        names = [rng.choice(tuple(_SYSTEM_PHRASES))]
        params, reference = _build(rng, split, names, reference)
        system = _SYSTEM_PHRASES[names[0]].pick(rng, split).format(**_params_for_prompt(params))
        meta = {"constraints": names, "params": params, "answers": list(answers)}
        return make_task(self.name, [Message("system", system), user(question)], meta, reference)

    def score(self, meta: dict, response: str, stopped: bool = True) -> Score:
        return _score(meta, response, stopped)
