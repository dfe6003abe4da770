"""Lenient text parsing shared by the verifiers: phrases, words, numbers, sentences, list items."""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Collection, Iterable

_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "-"})
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:,\d{3})*(?:\.\d+)?")
_ITEM_PREFIX = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s*")
_ARTICLE = re.compile(r"^(?:a|an|the)\s+")


def norm(text: str) -> str:
    """Lower case, ASCII quotes and dashes, accents removed (`Bogotá` -> `bogota`)."""
    if text.isascii():  # the common case: nothing to translate or decompose
        return text.lower()
    text = unicodedata.normalize("NFKD", text.translate(_QUOTES))
    return "".join(c for c in text if not unicodedata.combining(c)).lower()


def has_word(text: str, word: str) -> bool:
    """`word` (or a phrase) occurs in `text` as whole words, ignoring case and accents."""
    return re.search(r"(?<!\w)" + re.escape(norm(word)) + r"(?!\w)", norm(text)) is not None


@functools.lru_cache(maxsize=256)
def _any_pattern(phrases: tuple[str, ...]) -> re.Pattern:
    return re.compile(r"(?<!\w)(?:" + "|".join(re.escape(norm(p)) for p in phrases) + r")(?!\w)")


def has_any(text: str, phrases: Iterable[str]) -> bool:
    """Any of `phrases` occurs in `text` as whole words (`has_word` of each, in one pass over the text)."""
    phrases = tuple(phrases)
    return bool(phrases) and _any_pattern(phrases).search(norm(text)) is not None


def words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z0-9']+", text)


def numbers(text: str) -> list[float]:
    """Every number in `text` in order (`-7`, `1,200`, `3.5`)."""
    return [float(m.replace(",", "")) for m in _NUMBER.findall(text)]


def sentences(text: str) -> list[str]:
    """Sentences split after `.`, `!` or `?`; pieces without letters do not count."""
    parts = re.split(r"(?<=[.!?])\s+", text.strip())
    return [p for p in parts if re.search(r"[A-Za-z]", p)]


def lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.strip().splitlines() if ln.strip()]


def strip_answer(text: str) -> str:
    """The response without surrounding space, quotes, backticks and a final period."""
    return text.strip().strip("`'\"").strip().rstrip(".!").strip().strip("`'\"")


def items(text: str) -> list[str]:
    """List items, lower-cased: one per line when there are several lines (bullets and numbers
    stripped, a first line ending in ':' dropped as a preamble), otherwise comma/`and` separated
    (text before a ':' dropped). Leading articles and trailing punctuation are removed."""
    rows = lines(norm(text))
    if len(rows) > 1:
        if rows[0].endswith(":"):
            rows = rows[1:]
        raw = [_ITEM_PREFIX.sub("", r) for r in rows]
    elif rows:
        body = rows[0].rsplit(":", 1)[-1]
        raw = re.split(r",|;|\band\b", body)
    else:
        raw = []
    out = [_ARTICLE.sub("", r.strip().strip(".!?\"'`*").strip()) for r in raw]
    return [r for r in out if r]


def in_set(item: str, allowed: Collection[str]) -> bool:
    """`item` is in `allowed`, also as a simple plural (`apples`, `peaches`)."""
    return item in allowed or item.removesuffix("s") in allowed or item.removesuffix("es") in allowed
