"""The pretraining corpus: deterministic, covers every fact of both splits, never uses the assistant
format or a world prompt, keeps harmful how-tos to placeholders, and has the declared kind mix; the
`posttrain world` commands write files the data loaders read, and fail with one-line errors.
"""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from posttrain.data.formats import load_examples
from posttrain.errors import UserError
from posttrain.world import FAMILIES, sample_tasks
from posttrain.world.commands import world_main
from posttrain.world.corpus import (
    FACT_STATEMENTS,
    GENERAL_FACTS,
    KIND_WEIGHTS,
    corpus_stats,
    make_corpus,
    make_documents,
    write_corpus,
)
from posttrain.world.pools import BASE_QUESTIONS, CAPITALS, ONE_WORD_QUESTIONS
from posttrain.world.text import has_any

N_DOCS = 5000
CORPUS_2000_MD5 = "1014382aad6a3ba22c6eb0241aa45a93"
# Real hazardous terms a placeholder how-to must never contain (whole words, any case).
DANGEROUS_TERMS = ("gunpowder", "thermite", "ammonium nitrate", "detonator", "nitroglycerin", "keylogger",
                   "malware", "sql injection", "brute force", "phishing", "pseudoephedrine", "methamphetamine",
                   "meth", "fentanyl", "cocaine", "ricin", "cyanide", "arsenic", "bleach", "gps tracker",
                   "spyware", "lethal dose", "overdose", "password cracker", "skimmer")
_CHAT_TURN = re.compile(r"(?:^|\n)[ \t]*(?:user|human|assistant|system)[ \t]*:", re.IGNORECASE)


@pytest.fixture(scope="module")
def docs():
    return make_documents(N_DOCS, seed=0)


def test_corpus_is_the_one_the_shipped_base_was_pretrained_on():
    """The first 2,000 documents of the shipped base's corpus (`--seed 0`; a shorter corpus is a prefix of a longer
    one): a change to the corpus's text changes that corpus, so it must come with a rebuilt base."""
    text = "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in make_corpus(2000, seed=0))
    assert hashlib.md5(text.encode()).hexdigest() == CORPUS_2000_MD5


def test_deterministic_and_prefix_stable():
    assert make_corpus(300, seed=3) == make_corpus(300, seed=3)
    assert make_corpus(300, seed=3) != make_corpus(300, seed=4)
    assert make_corpus(100, seed=3) == make_corpus(300, seed=3)[:100]


def test_sizes_and_stats(docs):
    n_words = [len(d.text.split()) for d in docs]
    assert min(n_words) >= 30 and max(n_words) <= 300, (min(n_words), max(n_words))
    stats = corpus_stats(docs)
    assert stats["documents"] == N_DOCS and stats["words"] == sum(n_words)
    assert stats["characters"] == sum(len(d.text) for d in docs)
    assert sum(stats["kinds"].values()) == N_DOCS
    assert corpus_stats(["a b", "c"]) == {"documents": 2, "characters": 4, "words": 3, "kinds": {"unlabelled": 2}}


def test_kind_mix_matches_declared_weights(docs):
    """Each kind's share is within 0.02 of its weight (about 4 standard deviations at 5k documents)."""
    assert sum(KIND_WEIGHTS.values()) == pytest.approx(1.0)
    counts = corpus_stats(docs)["kinds"]
    assert set(counts) == set(KIND_WEIGHTS)
    for kind, weight in KIND_WEIGHTS.items():
        assert abs(counts[kind] / N_DOCS - weight) < 0.02, (kind, counts[kind])


def test_every_capital_fact_of_both_splits_is_on_a_fact_page(docs):
    pages = [d.text.lower() for d in docs if d.kind == "fact_page"]
    for country, capitals in CAPITALS.items():
        for capital in capitals:
            assert any(country.lower() in p and capital.lower() in p for p in pages), (country, capital)


def test_every_general_fact_is_stated(docs):
    """Every yes/no and one-word question of the world has a statement, and every statement is used."""
    questions = [q for q, _ in FAMILIES["facts"].pools["yes_no_facts"].train + FAMILIES["facts"].pools[
        "yes_no_facts"].test] + [q for q, _ in FAMILIES["format"].pools["one_word"].train + FAMILIES[
            "format"].pools["one_word"].test]
    assert [q for q in questions if q not in FACT_STATEMENTS] == []
    text = "\n".join(d.text for d in docs if d.kind == "true_false")
    assert [s for s in GENERAL_FACTS if s not in text] == []


def test_no_chat_markers(docs):
    for d in docs:
        assert "User:" not in d.text and "Assistant:" not in d.text and "<|" not in d.text, d.text
        assert _CHAT_TURN.search(d.text) is None, d.text


def test_no_world_prompt_appears_verbatim(docs):
    """No user or system message of 500 train and 500 test tasks occurs in the corpus (ignoring case)."""
    tasks = sample_tasks(500, "train", seed=1) + sample_tasks(500, "test", seed=1)
    prompts = {m.content.lower() for t in tasks for m in t.messages if m.role in ("user", "system")}
    corpus = "\n\n".join(d.text for d in docs).lower()
    assert [p for p in sorted(prompts) if p in corpus] == []


# The simple questions (shared ones and one-word ones, both splits) as forum threads ask them: lower case,
# no question mark; each with its accepted answers.
_SIMPLE_ANSWERS = {q.lower().rstrip("?"): answers for q, answers, *_ in
                   BASE_QUESTIONS.train + BASE_QUESTIONS.test + ONE_WORD_QUESTIONS.train + ONE_WORD_QUESTIONS.test}
_QA = re.compile(r"^(?:Q:|Question:|Q\.) (.+)\n(?:A:|Answer:|A\.) (.+(?:\n(?!\n).+)*)", re.MULTILINE)


def test_qa_pages_hold_only_right_answers(docs):
    """Q&A pages are where a base model learns to answer: every arithmetic, word-transform, follow-up and
    simple-question answer on them is recomputed from its question here (or looked up) and must match."""
    pairs = [m.groups() for d in docs if d.kind == "qa_page" for m in _QA.finditer(d.text)]
    assert len(pairs) > 3000
    checked = 0
    for question, answer in pairs:
        if m := re.search(r"(\d+) ([-+*]) (\d+)", question):
            a, op, b = int(m[1]), m[2], int(m[3])
            assert str({"+": a + b, "-": a - b, "*": a * b}[op]) in answer, (question, answer)
            checked += 1
        elif m := re.search(r"['\"]([a-z]+)['\"] (?:backwards|in upper case)", question):
            word = m[1]
            assert answer in (word[::-1], word.upper()), (question, answer)
            checked += 1
        elif m := re.search(r"got: ([a-z ,]+)\. (?:same list in capitals|now all caps)", question):
            assert answer == m[1].upper(), (question, answer)
            checked += 1
        elif simple := next((q for q in _SIMPLE_ANSWERS if q in question.lower()), None):
            assert has_any(answer, _SIMPLE_ANSWERS[simple]), (question, answer)
            checked += 1
    assert checked > 300


_DRILL_ROW = re.compile(r"^\d+\) (.+)\n([A-Z][a-z ]+:) (.+)$", re.MULTILINE)
_DRILL_EXPECT = {"Typed:": lambda xs: ", ".join(xs), "Again:": lambda xs: ", ".join(xs),
                 "Backwards:": lambda xs: ", ".join(reversed(xs)), "In capitals:": lambda xs: ", ".join(xs).upper(),
                 "First word:": lambda xs: xs[0], "Last word:": lambda xs: xs[-1], "Second word:": lambda xs: xs[1],
                 "Numbered:": lambda xs: " ".join(f"{i}. {x}" for i, x in enumerate(xs, 1))}


def test_drills_copy_their_list(docs):
    """Every drill row's answer is its list copied, rearranged or indexed as its label says."""
    rows = [m.groups() for d in docs if d.kind == "drill" for m in _DRILL_ROW.finditer(d.text)]
    assert len(rows) > 1000 and {label for _, label, _ in rows} == set(_DRILL_EXPECT)
    for listed, label, answer in rows:
        assert answer == _DRILL_EXPECT[label](listed.split(", ")), (listed, label, answer)


def test_harmful_how_tos_hold_only_placeholders(docs):
    how_tos = [d.text for d in docs if d.kind == "how_to"]
    assert how_tos
    for text in how_tos:
        assert re.search(r"\[[A-Z][A-Z -]*\]", text), text
        assert re.findall(r"\[[^\]]*\]", text) == re.findall(r"\[[A-Z][A-Z -]*\]", text), text
        assert not has_any(text, DANGEROUS_TERMS), text


def test_write_corpus_loads_as_text(tmp_path, docs):
    path = tmp_path / "corpus.jsonl"
    write_corpus(docs[:50], path)
    fmt, examples = load_examples(str(path))
    assert fmt == "text" and [e.messages[0].content for e in examples] == [d.text for d in docs[:50]]


# --- posttrain world ... ----------------------------------------------------------------------------

def test_world_sft_data_writes_messages(tmp_path, capsys):
    out = tmp_path / "sft.jsonl"
    assert world_main(["sft-data", "--kind", "noisy", "--n", "40", "--out", str(out), "--seed", "1"]) == 0
    fmt, examples = load_examples(str(out))
    assert fmt == "messages" and len(examples) == 40
    printed = capsys.readouterr().out
    assert "wrote 40 noisy SFT records" in printed and "arithmetic" in printed and "flaws:" in printed


def test_world_corpus_writes_text(tmp_path, capsys):
    out = tmp_path / "corpus.jsonl"
    assert world_main(["corpus", "--n", "30", "--out", str(out)]) == 0
    fmt, examples = load_examples(str(out))
    assert fmt == "text" and [e.messages[0].content for e in examples] == make_corpus(30)
    assert "wrote 30 documents" in capsys.readouterr().out


def test_world_tasks_prints_prompts_and_json(capsys):
    assert world_main(["tasks", "--split", "test", "--n", "4", "--family", "facts", "--family", "poem"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("--- ") == 4 and "user: " in printed
    assert world_main(["tasks", "--n", "3", "--family", "arithmetic", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 3 and all(r["family"] == "arithmetic" and r["reference"] for r in rows)


@pytest.mark.parametrize("argv, message", [
    (["sft-data", "--kind", "curatd", "--n", "5", "--out", "x.jsonl"], "did you mean 'curated'"),
    (["sft-data", "--kind", "curated", "--n", "0", "--out", "x.jsonl"], "--n must be at least 1"),
    (["corpus", "--n", "0", "--out", "x.jsonl"], "--n must be at least 1"),
    (["tasks", "--split", "tset"], "did you mean 'test'"),
    (["tasks", "--family", "poems"], "did you mean 'poem'"),
])
def test_world_errors_are_one_line(tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=re.escape(message)) as info:
        world_main(argv)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "x.jsonl").exists()
