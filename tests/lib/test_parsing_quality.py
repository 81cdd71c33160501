import pytest

from datakeg.sources.discovery import output_stems
from datakeg.generation.parsing import ParseError, parse_pairs
from datakeg.curation.quality import Gate, Grounding, normalize_question
from datakeg.dataset.records import Pair, from_row, to_row


@pytest.mark.parametrize("reply", [
    '{"pairs": [{"question": "What is X?", "answer": "X is Y."}]}',
    '```json\n{"pairs": [{"question": "What is X?", "answer": "X is Y."}]}\n```',
    '[{"question": "What is X?", "answer": "X is Y."}]',
    '{"question": "What is X?", "answer": "X is Y."}',
    'Sure, here you go:\n{"pairs": [{"Question": "What is X?", "Answer": "X is Y."}]}\nHope this helps!',
    '<think>let me think {"not": "this"}</think>{"qa_pairs": [{"q": "What is X?", "a": "X is Y."}]}',
])
def test_tolerant_parsing(reply):
    assert parse_pairs(reply) == [Pair("What is X?", "X is Y.")]


def test_json_lines_and_truncated_reply():
    assert len(parse_pairs('{"question": "A?", "answer": "a"}\n{"question": "B?", "answer": "b"}')) == 2
    truncated = '{"pairs": [{"question": "A?", "answer": "a"}, {"question": "B?", "ans'
    assert parse_pairs(truncated) == [Pair("A?", "a")]


def test_reasoning_field_and_empty_list():
    got = parse_pairs('{"pairs": [{"question": "Q?", "reasoning": "because", "answer": "A"}]}')
    assert got[0].reasoning == "because"
    assert parse_pairs('{"pairs": []}') == []


@pytest.mark.parametrize("reply", ["", "I cannot help with that.", '{"pairs": [{"question": "x", ', '{"foo": 1}'])
def test_unparseable_raises(reply):
    with pytest.raises(ParseError):
        parse_pairs(reply)


def test_dedupe_exact_near_and_distinct():
    gate = Gate(dedupe_threshold=90)
    gate.accept(normalize_question("How do I install Tallyho from PyPI?"))
    grounding = None
    assert gate.check(Pair("How do I install Tallyho from PyPI?", "pip install"), grounding, []) == "duplicate"
    assert gate.check(Pair("How do I install tallyho from PyPI ?!", "pip install"), grounding, []) == "duplicate"
    assert gate.check(Pair("How can I install Tallyho from PyPI?", "pip install"), grounding, []) == "duplicate"
    assert gate.check(Pair("Which Python version does Tallyho need?", "3.10"), grounding, []) is None
    # inside one reply
    batch = [normalize_question("Which option prints JSON output?")]
    assert gate.check(Pair("Which option prints JSON output ?", "--json"), grounding, batch) == "duplicate"


@pytest.mark.parametrize("threshold", [80, 90, 95])
def test_duplicate_check_against_accepted_questions_is_token_sort_ratio(threshold):
    """The accepted questions are compared with their words sorted once (see Gate._sorted); the
    verdicts must be rapidfuzz's token_sort_ratio's, word order and near misses included."""
    import random

    from rapidfuzz import fuzz

    rng = random.Random(threshold)
    words = ["install", "tallyho", "from", "pypi", "which", "python", "version", "does", "need", "option",
             "prints", "json", "output", "über", "straße", "日本語", "中文", "x1", "10", "a_b", "configure"]
    accepted = [normalize_question(" ".join(rng.choices(words, k=rng.randint(3, 9)))) for _ in range(60)]
    gate = Gate(dedupe_threshold=threshold, accepted=accepted[:30])
    for q in accepted[30:]:
        gate.accept(q)
    probes = ([" ".join(rng.sample(q.split(), len(q.split()))) for q in accepted[:40]]  # reordered words
              + [q.replace(rng.choice(q.split()), rng.choice(words), 1) for q in accepted[:40]]  # one word swapped
              + [normalize_question(" ".join(rng.choices(words, k=rng.randint(3, 9)))) for _ in range(200)])
    verdicts = [gate.is_duplicate(q) for q in probes]
    truth = [q in accepted or any(fuzz.token_sort_ratio(q, a, processor=None) >= threshold for a in accepted)
             for q in probes]
    assert verdicts == truth
    assert 40 <= sum(truth) < len(probes)  # the reordered copies at least, and not every probe


def test_short_pairs_dropped():
    gate = Gate()
    assert gate.check(Pair("Why?", "Because it is so."), None, []) == "too_short"
    assert gate.check(Pair("What does the --json option do?", ""), None, []) == "too_short"


def test_grounding():
    g = Grounding("Tallyho counts words, lines and headings in Markdown files. Install it with pip.")
    assert g.score("It counts the words and headings of Markdown files.") == 1.0
    assert g.score("Zorblaxian moons glow turquoise whenever quasar volcanoes erupt.") == 0.0
    gate = Gate(grounding_threshold=0.5)
    assert gate.check(Pair("What colour are Zorblax moons?", "Zorblaxian moons glow turquoise."), g, []) == "ungrounded"
    assert Gate(grounding_threshold=0).check(Pair("What colour are Zorblax moons?", "Turquoise moons."), g, []) is None


def test_output_stems_never_collide():
    stems = output_stems(["a/README.md", "b/README.md", "x.md", "x.txt", "y.txt"])
    assert stems == {"a/README.md": "a/README", "b/README.md": "b/README", "x.md": "x.md", "x.txt": "x.txt", "y.txt": "y"}
    assert len(set(stems.values())) == 5


@pytest.mark.parametrize("fmt,rf,keys", [
    ("completion", "separate", {"prompt", "completion"}),
    ("chat", "separate", {"messages"}),
    ("reasoning", "separate", {"question", "reasoning", "answer"}),
    ("reasoning", "integrated", {"prompt", "completion"}),
])
def test_row_shapes_round_trip(fmt, rf, keys):
    pair = Pair('Q "quoted"\nline?', "A </s> ünïcode", "why" if fmt == "reasoning" else "")
    row = to_row(pair, fmt, rf, system_message="sys")
    assert set(row) == keys
    assert from_row(row) == pair
    if rf == "integrated":
        assert row["completion"].startswith("<think>why</think>")
