"""The deterministic quality gates: low false drops on a corpus of good pairs in six languages,
and every planted bad pair caught with its reason."""

import pytest

from datakeg.curation.coverage import question_kind
from datakeg.generation.judge import parse_scores
from datakeg.curation.quality import Gate, Grounding, content_units, dangling, echo
from datakeg.dataset.records import Pair, to_row, from_row

from gate_corpus import BAD, GOOD


def check(chunk, q, a):
    return Gate().check(Pair(q, a), Grounding(chunk), [])


def test_good_corpus_loses_at_most_two_percent():
    pairs = [(chunk, q, a) for chunk, items in GOOD for q, a in items]
    assert len(pairs) >= 95
    langs = {"de": "Konfiguration", "fr": "Sortie", "es": "Integración", "zh": "安装", "ja": "使い方"}
    assert all(any(word in chunk for chunk, _ in GOOD) for word in langs.values())
    dropped = [(q, a, check(chunk, q, a)) for chunk, q, a in pairs if check(chunk, q, a)]
    assert len(dropped) <= 0.02 * len(pairs), dropped


@pytest.mark.parametrize("chunk,question,answer,reason", BAD, ids=[f"{r}-{q[:30]}" for _, q, _, r in BAD])
def test_planted_bad_pairs_are_caught(chunk, question, answer, reason):
    assert check(chunk, question, answer) == reason


def test_every_reason_and_language_is_planted():
    reasons = {r for *_, r in BAD}
    assert reasons == {"dangling", "echo", "ungrounded"}
    cjk = [q for _, q, _, _ in BAD if any("\u3040" <= ch <= "\u9fff" for ch in q)]
    assert len(cjk) >= 6


def test_cjk_text_is_compared_as_bigrams():
    units = content_units("Tallyho 需要 Python 3.10 或更高版本")
    assert "版本" in units and "tallyho" in units and "python" in units
    # a whole CJK sentence is no longer one "word": one foreign sentence does not pass as grounded
    g = Grounding("Tallyho 只读取文件，从不修改你的文档。")
    assert g.score("它从不修改文档。", "Tallyho 会修改文档吗？") == 1.0
    assert g.score("它会上传文档到云端服务器。", "Tallyho 会修改文档吗？") < 0.5


def test_grounding_counts_only_the_answers_new_words():
    chunk = "The server listens on port 8731 by default."
    g = Grounding(chunk)
    # the question's own words do not carry an invented answer through
    q = "Which port does the Zorblax quantum server listen on by default?"
    assert g.score("The Zorblax quantum server listens on port 8731.", q) == 1.0
    assert g.score("The Zorblax quantum server listens on a turquoise socket.", q) < 0.5
    assert g.score("It listens on port 9000.", "Which port?") == 0.0  # a number the chunk does not hold


@pytest.mark.parametrize("question", [
    "What does this section say about ports?", "According to the document, what is the port?",
    "What is described in the excerpt?", "Was steht in diesem Abschnitt?", "Que dit ce passage ?",
    "¿Qué dice esta sección?", "本节讲了什么？", "上述命令有什么作用？", "この節の内容は？", "上記の設定は何ですか？",
    "What does this command do?", "Was macht dieser Befehl?", "这个选项有什么作用？", "このコマンドは何をしますか？",
])
def test_dangling_questions(question):
    assert dangling(question)


@pytest.mark.parametrize("question", [
    "What does the `--json` option print, and where does this option send errors?",
    "How do I make the text bold in Markdown?", "What does the text editor integration of Tallyho do?",
    "Which Python version does Tallyho 需要?", "Python 3.10以上が必要ですか？", "What is the current context in Flask?",
])
def test_standalone_questions(question):
    assert not dangling(question)


def test_echo():
    assert echo("What is the default port?", "The default port.")
    assert not echo("What is the default port?", "8731.")
    assert not echo("Which option includes code blocks in the count?", "`--include-code`.")
    assert not echo("Does Tallyho modify documents?", "No.")
    assert echo("Tallyho 的配置文件叫什么？", "Tallyho 的配置文件。")


def test_question_kinds():
    kinds = {"What does --json do?": "what", "How do I install it?": "how", "Why is it slow?": "why",
             "When does it run?": "when", "Which port is used?": "which", "Is it free?": "yes-no",
             "Wie installiert man Tallyho?": "how", "¿Cuál es el puerto?": "which", "Tallyho 会修改文档吗？": "yes-no",
             "如何安装？": "how", "なぜ失敗しますか？": "why", "Where is the config?": "other"}
    assert {q: question_kind(q) for q in kinds} == kinds


def test_judge_reply_parsing_is_tolerant():
    text = 'Here:\n```json\n{"scores": [{"index": 2, "faithful": "4", "standalone": 5, "useful": 3, "reason": "ok"},' \
           ' {"index": 9, "faithful": 5, "standalone": 5, "useful": 5}, {"index": 1, "faithful": 1}]}\n```'
    found = parse_scores(text, 2)
    assert list(found) == [2] and found[2]["score"] == 3 and found[2]["faithful"] == 4
    with pytest.raises(ValueError):
        parse_scores("no json", 1)


def test_scores_ride_along_in_rows_and_are_ignored_by_readers():
    pair = Pair("What is X?", "X is Y.", scores={"score": 4})
    for fmt in ("completion", "chat", "reasoning"):
        row = to_row(pair, fmt)
        assert row["scores"] == {"score": 4}
        assert from_row(row) == Pair("What is X?", "X is Y.")


def test_a_later_turn_is_a_duplicate_of_any_question_the_document_holds():
    """A conversation's later turn: a duplicate of a question accepted for the document (any split,
    first or later turn), of an earlier turn of its own conversation or of a turn kept from the same
    reply; a fresh follow-up passes, and a follow-up may still say "that" (no dangling gate)."""
    from datakeg.curation.quality import normalize_question, turn_norms

    chunk = Grounding("Run tallyho --json to print JSON. Run tallyho --csv for a CSV table. Hidden folders are skipped.")
    gate = Gate(accepted=[normalize_question("How do I print JSON with tallyho?")])
    answer = "Run tallyho --csv for a CSV table."
    assert gate.check_turn("And how do I get a CSV table from that?", answer, chunk, []) is None
    assert gate.check_turn("How do I print JSON with tallyho", answer, chunk, []) == "duplicate"  # accepted
    own = [normalize_question("How do I get a CSV table?")]
    assert gate.check_turn("How do I get a CSV table?", answer, chunk, own) == "duplicate"  # own conversation
    # a later turn accepted with its conversation is one the next conversations must not repeat
    conv = Pair("Which folders does tallyho skip?", "Hidden folders are skipped.",
                followups=(("And how do I get a CSV table from that?", answer),))
    assert turn_norms(conv) == ["which folders does tallyho skip", "and how do i get a csv table from that"]
    assert turn_norms(Pair("Q one here?", "A.")) == ["q one here"]
    assert not gate.is_duplicate_turns(turn_norms(conv))
    gate.accept_turns(turn_norms(conv))
    assert gate.check_turn("and how do I get a CSV table from that", answer, chunk, []) == "duplicate"
    assert gate.check(Pair("And how do I get a CSV table from that?", answer), chunk, []) == "duplicate"
