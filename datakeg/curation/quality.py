"""Quality gates applied to every pair before it is accepted.

All deterministic and cheap (no model is asked), checked in this order:

* ``too_short``: empty or trivially short question/answer;
* ``dangling``: the question leans on context the fine-tuned model will never see ("this
  section", "the excerpt", "according to the document", "this option" with nothing named), in
  English, German, French, Spanish, Chinese and Japanese;
* ``echo``: the answer adds nothing to the question (no content of its own beyond the question's
  words) or carries no fact at all;
* ``duplicate``: the question is an exact or near duplicate (rapidfuzz, 0-100 scale) of one
  already accepted for the document in any split, or of another question in the same reply (in a
  multi-turn conversation every user turn counts: each is checked, and each is remembered);
* ``ungrounded``: most of the answer's *new* content (what it says beyond the question) does not
  occur in the chunk, or it states a number (2+ digits) the chunk does not hold. Words match
  exactly or on a shared 5-letter prefix (inflections); Chinese and Japanese text, which has no
  spaces, is compared as character bigrams.

Content "units" (:func:`content_units`): lowercase words of 3+ letters (or numbers) that are not
stopwords, plus the character bigrams of every CJK run (a bigram made only of kana or of
function characters is left out).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

from rapidfuzz import fuzz, process, utils

from datakeg.dataset.records import Pair

_WORD = re.compile(r"\w+", re.UNICODE)
_CJK_CHARS = "\u3040-\u30fa\u30fc-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u31f0-\u31ff"
_CJK = f"[{_CJK_CHARS}]"
_UNIT = re.compile(f"(?P<cjk>{_CJK}+)|(?P<word>(?:(?!{_CJK})\\w)+)", re.UNICODE)
_KANA = re.compile("[\u3040-\u309f\u30fc]")
# Chinese/Japanese characters that carry grammar rather than content
_CJK_FUNCTION = frozenset("的了是在和与或也都就而及这那个一有为中上下不吗呢吧么什怎如何可以要会能用使请被把对从到将您你我他它们该此其之于所等些每哪里时后前")

# Words that carry no content in the languages datakeg is most used with.
STOPWORDS = frozenset(
    """a an the and or but if then else of to in on at by for with from into onto as is are was were be been
    being am do does did done has have had having it its this that these those there here which who whom whose
    what when where why how not no yes can could may might must shall should will would you your yours we our
    ours they their theirs he she his her him them i me my mine us also only just than too very so such
    about above after again against all any both each few more most other some same own out over under up
    down off once further while during before between through use used using uses one two
    der die das und oder ein eine einer eines dem den des ist sind war wird werden mit von zu im auf für
    nicht auch als wie bei aus nach le la les un une des et ou est sont de du au aux en pour par avec dans
    sur que qui pas el los las y o es son del con para por una unos unas il lo gli e di da che non""".split()
)


def normalize_question(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def content_words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if (len(w) > 2 or w.isdigit()) and w not in STOPWORDS]


def _cjk_bigrams(run: str) -> list[str]:
    grams = [run] if len(run) == 1 else [run[k:k + 2] for k in range(len(run) - 1)]
    return [g for g in grams
            if not all(_KANA.match(ch) or ch in _CJK_FUNCTION for ch in g)]


def content_units(text: str) -> list[str]:
    """Content words (3+ letters or a number, not a stopword) and CJK character bigrams."""
    out: list[str] = []
    for m in _UNIT.finditer(text.lower()):
        if m.group("cjk"):
            out.extend(_cjk_bigrams(m.group("cjk")))
        else:
            w = m.group("word")
            if (len(w) > 2 or w.isdigit()) and w not in STOPWORDS and w != "_" * len(w):
                out.append(w)
    return out


def _all_units(text: str) -> set[str]:
    """Every word (any length) and every CJK bigram/char of ``text``: what an answer may draw on."""
    out: set[str] = set()
    for m in _UNIT.finditer(text.lower()):
        run = m.group("cjk")
        if run:
            out.update(run[k:k + 2] for k in range(len(run) - 1))
            out.update(run)
        else:
            out.add(m.group("word"))
    return out


def _matches(unit: str, words: set[str], prefixes: set[str]) -> bool:
    return unit in words or (len(unit) >= 5 and unit[:5] in prefixes and not unit.isdigit())


# -- dangling questions ----------------------------------------------------------------------
_REF_NOUNS_EN = (r"(?:section|excerpt|passage|text|snippet|paragraph|chapter|document|page|article|extract|"
                 r"chunk|table above|list above|example above)")
_DANGLING = [re.compile(p, re.IGNORECASE) for p in (
    # English
    rf"\b(?:this|these|the (?:above|preceding|previous|given|provided|following|quoted))\s+"
    rf"{_REF_NOUNS_EN}s?\b",
    r"\b(?:that|those) (?:section|excerpt|passage|snippet|paragraph|chapter|extract)s?\b",
    r"\bthe (?:excerpt|passage|snippet|extract|chunk)s?\b",
    r"\b(?:the|this) text (?:says?|states?|mentions?|describes?|explains?|refers?)\b",
    r"\bthe (?:given|provided) context\b",
    r"\b(?:in|from) the text\b(?! (?:editor|field|box|file|mode|format|view|area|input|output|string|"
    r"color|colour|size|style|widget|content))",
    r"\b(?:according to|as (?:stated|described|mentioned|shown|explained) in|based on) (?:the|this) "
    r"(?:document|text|excerpt|passage|section|page|article|paragraph|chunk|context|source)\b",
    r"\b(?:mentioned|described|listed|shown|stated|discussed|given|explained) (?:above|earlier|previously|below)\b",
    r"\bthe above\b",
    r"\b(?:above|aforementioned)[- ](?:mentioned|described|example|section|command|option|text|list|table)\b",
    r"\b(?:does|do|did) the (?:author|writer|documentation)s? (?:say|mention|state|describe|recommend)\b",
    # German
    r"\b(?:dies|diese[mnrs]?)\s+(?:Abschnitt|Abschnitts|Abschnittes|Text|Textes|Textausschnitt|Auszug|Auszugs|"
    r"Passage|Dokument|Dokuments|Dokumentes|Kapitel|Kapitels|Absatz|Absatzes|Seite)\b",
    r"\b(?:im|in dem|aus dem|laut dem|laut|gemäß dem|gemäß|nach dem) (?:obigen |vorliegenden |gegebenen )?"
    r"(?:Text|Auszug|Textausschnitt|Abschnitt|Dokument)\b(?!\w)",
    r"\b(?:oben|weiter oben) (?:genannte|genannten|erwähnte|erwähnten|beschriebene|beschriebenen|stehende)\b",
    r"\b(?:im|der|die|das|den|dem) (?:obigen?|vorliegenden?|vorherigen?) (?:Abschnitt|Text|Auszug|Beispiel|Absatz|"
    r"Tabelle|Liste)\b",
    r"\b(?:der|den|dem|des) (?:Auszug|Auszugs|Textausschnitt|Textausschnitts)\b",
    # French
    r"\b(?:ce|cet|cette|ces) (?:passage|section|texte|extrait|document|paragraphe|chapitre|article|page)s?\b",
    r"\bl['’](?:extrait|article ci-dessus|exemple ci-dessus)\b",
    r"\bci-(?:dessus|dessous)\b",
    r"\b(?:selon|d['’]après|dans|suivant) (?:le|l['’]|ce|cet|cette|la) ?(?:texte|document|passage|extrait|section)\b",
    r"\b(?:mentionnée?s?|décrite?s?|indiquée?s?) plus haut\b",
    # Spanish
    r"\b(?:este|esta|estos|estas|ese|esa) (?:sección|pasaje|texto|fragmento|extracto|documento|párrafo|capítulo|"
    r"apartado|artículo|página)s?\b",
    r"\b(?:el|del|al) (?:fragmento|extracto|pasaje)\b",
    r"\b(?:según|de acuerdo con|conforme a) (?:el|la|este|esta) (?:texto|documento|fragmento|pasaje|sección|"
    r"extracto|apartado)\b",
    r"\b(?:mencionad[oa]s?|descrit[oa]s?|indicad[oa]s?) (?:arriba|anteriormente)\b",
    r"\b(?:la|el) (?:sección|apartado|texto|ejemplo|párrafo) anterior\b",
    # Italian / Portuguese (the commonest forms)
    r"\b(?:questa|questo) (?:sezione|passaggio|testo|estratto|documento|paragrafo)\b",
    r"\b(?:esta|este|nesta|neste|desta|deste) (?:seção|secção|passagem|trecho|texto|documento)\b",
    # Chinese
    r"(?:本|这一?|该|此|上一?)(?:节|段|段落|章节|部分|篇|章)(?:中|里|内|所|提到|介绍|描述|说|讲)?",
    r"(?:上文|上述|前文|文中|原文|本文|摘录|节选|下文)",
    r"(?:根据|按照|依据|依照)(?:本|该|这[个篇段]?|此)?(?:文档|文本|文章|段落|材料|内容|摘录|资料)",
    # Japanese
    r"(?:この|本|上の|前の|次の)(?:節|セクション|章|段落|文書|文章|テキスト|抜粋|ページ|項)",
    r"(?:上記|前述|後述|抜粋|本文|文中)",
    r"(?:文書|文章|テキスト|資料)(?:によると|によれば|では|に書かれ|で説明|に記載)",
)]
# "this option", "this command" ... naming nothing: dangling unless the question names a thing
_THIS_THING = [re.compile(p, re.IGNORECASE) for p in (
    r"\b(?:this|that|the said) (?:option|command|flag|setting|function|method|parameter|feature|tool|file|"
    r"example|step|module|class|variable|value|field|key|argument|program|script|snippet|code|approach|format)\b",
    r"\b(?:diese[mnrs]?|dies) (?:Option|Befehl|Befehls|Kommando|Einstellung|Funktion|Parameter|Datei|Beispiel|"
    r"Schritt|Wert|Feld|Werkzeug|Tool|Programm|Skript)\b",
    r"\b(?:ce|cet|cette) (?:option|commande|paramètre|réglage|fonction|fichier|exemple|étape|outil|programme|"
    r"valeur|champ)\b",
    r"\b(?:este|esta|ese|esa) (?:opción|comando|parámetro|ajuste|función|archivo|ejemplo|paso|herramienta|"
    r"programa|valor|campo)\b",
    r"(?:这个|该|此|这一)(?:选项|命令|参数|设置|函数|方法|文件|示例|例子|步骤|工具|程序|字段|值)",
    r"(?:この|その)(?:オプション|コマンド|設定|関数|メソッド|パラメータ|ファイル|例|手順|ツール|プログラム|値|フィールド)",
)]
_NAMED = re.compile(r"`[^`]+`|(?<![\w-])--?[A-Za-z][\w-]*|\"[^\"]+\"|“[^”]+”|„[^“”]+[“”]|«[^»]+»|「[^」]+」|『[^』]+』|"
                    r"\w+[._/:]\w+|\w+\(\)|\b[a-z]+[A-Z]\w*|\b[A-Z]{2,}\b|\b\w*\d\w*\b")


def dangling(question: str) -> str | None:
    """The phrase that makes ``question`` depend on unseen context, or None."""
    for pat in _DANGLING:
        m = pat.search(question)
        if m:
            return m.group(0)
    for pat in _THIS_THING:
        m = pat.search(question)
        if m and not _NAMED.search(question):
            return m.group(0)
    return None


_YES_NO = re.compile(r"^\W*(?:yes|no|ja|nein|doch|oui|non|si|sí|はい|いいえ|是的|是|不是|不|对|没有|可以|不可以|不能|能|会|"
                     r"不会|需要|不需要)(?:\b|(?=[\u3000-\u9fff]))", re.IGNORECASE)
# names an answer can add even when all its words are in the question: `code`, --flags, a.b, "quoted"
_NAME = re.compile(r"`[^`]+`|(?<![\w-])--?[A-Za-z][\w-]*|\w+[._/:]\w(?:[\w./:-]*\w)?|\w+_(?!\w)")
# words answers use to phrase an instruction; they need not occur in the chunk
_PHRASING = frozenset("""run runs running option options flag flags pass passing add adding called named via because
    instead enter type press call provide specify specified need needs needed write writes lets allows""".split())
def echo(question: str, answer: str) -> bool:
    """True when ``answer`` says nothing beyond ``question``: no content unit of its own (inflected
    forms of the question's words count as the question's), or it repeats the question."""
    if _YES_NO.search(answer.strip()):
        return False  # the answer says yes or no: that is its fact
    q_lower = question.lower()
    if any(m.group(0).strip("`").lower() not in q_lower for m in _NAME.finditer(answer)):
        return False  # it names a command, option or identifier the question does not
    q_all = _all_units(question)
    q_prefixes = {w[:5] for w in q_all if len(w) >= 5}
    return not any(not _matches(u, q_all, q_prefixes) for u in content_units(answer))


_NUMBER = re.compile(r"\d{2,}")


class Grounding:
    """Checks answers against one chunk's vocabulary (words, and character bigrams for CJK)."""

    def __init__(self, chunk_text: str):
        words = _all_units(chunk_text)
        self.words = words
        self.prefixes = {w[:5] for w in words if len(w) >= 5}
        self.numbers = set(_NUMBER.findall(chunk_text))

    def new_units(self, answer: str, question: str = "") -> list[str]:
        """The answer's content units that are not the question's own words."""
        units = content_units(answer)
        if not question:
            return [u for u in units if u not in _PHRASING]
        q_all = _all_units(question)
        q_prefixes = {w[:5] for w in q_all if len(w) >= 5}
        return [u for u in units if not _matches(u, q_all, q_prefixes) and u not in _PHRASING]

    def score(self, answer: str, question: str = "") -> float:
        """Share of the answer's new content units (those not copied from ``question``) found in
        the chunk (1.0 when there are none); 0.0 when it states a number the chunk does not hold."""
        if any(n not in self.numbers for n in _NUMBER.findall(answer) if n not in question):
            return 0.0
        units = self.new_units(answer, question)
        if not units:
            return 1.0
        hits = sum(1 for u in units if _matches(u, self.words, self.prefixes))
        return hits / len(units)


# a chunk is checked against in every split round and refill: its vocabulary is worked out once
# (at most 256 chunks kept, about as many as the documents in flight have)
grounding_for = functools.lru_cache(maxsize=256)(Grounding)


@dataclass
class Gate:
    """Filters pairs for one document, remembering every accepted question (all splits)."""

    dedupe_threshold: float = 90.0
    grounding_threshold: float = 0.5  # 0 switches the check off
    min_question_chars: int = 10
    min_answer_chars: int = 2
    accepted: list[str] = field(default_factory=list)  # normalized accepted questions
    # the same questions with their words sorted: token_sort_ratio(a, b) is ratio() of the two
    # strings with sorted words, so each accepted question is sorted once here rather than in every
    # comparison (a check against 120 questions: 11 instead of 49 µs; no end-to-end change measured
    # on small documents). Exact: a normalized question has one space between words.
    # ``accepted`` changes only through accept(), which keeps the two in step
    _sorted: list[str] = field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._sorted = [_sorted_words(q) for q in self.accepted]

    def check(self, pair: Pair, grounding: Grounding | None, batch: list[str]) -> str | None:
        """Return the reason to drop ``pair`` or None to keep it. ``batch``: normalized questions
        already kept from the same reply."""
        q, a = pair.question.strip(), pair.answer.strip()
        if len(q) < self.min_question_chars or len(a) < self.min_answer_chars:
            return "too_short"
        norm = normalize_question(q)
        if not norm:
            return "too_short"
        return self.check_content(q, a) or self.check_rest(norm, a, grounding, batch, q)

    def check_content(self, q: str, a: str) -> str | None:
        """The gates that look at one pair alone: ``dangling`` and ``echo``."""
        if dangling(q):
            return "dangling"
        if echo(q, a):
            return "echo"
        return None

    def check_rest(self, norm: str, a: str, grounding: Grounding | None, batch: list[str], q: str) -> str | None:
        if self.is_duplicate(norm, batch):
            return "duplicate"
        if grounding is not None and self.grounding_threshold > 0:
            if grounding.score(a, q) < self.grounding_threshold:
                return "ungrounded"
        return None

    def check_turn(self, q: str, a: str, grounding: Grounding | None, earlier: list[str]) -> str | None:
        """The gates for a later user turn of a conversation: as :meth:`check`, except that it may
        lean on the conversation (no ``dangling``). It is a duplicate of a question accepted for the
        document (any split, any turn) or of one of ``earlier`` (normalized: the conversation's
        earlier questions and every user turn already kept from the same reply)."""
        q, a = q.strip(), a.strip()
        norm = normalize_question(q)
        if len(q) < self.min_question_chars or len(a) < self.min_answer_chars or not norm:
            return "too_short"
        if echo(q, a):
            return "echo"
        if self.is_duplicate(norm, earlier):
            return "duplicate"
        if grounding is not None and self.grounding_threshold > 0 and grounding.score(a, q) < self.grounding_threshold:
            return "ungrounded"
        return None

    def is_duplicate(self, norm: str, extra: list[str] = ()) -> bool:
        """Whether normalized question ``norm`` is (nearly) one of ``extra`` or of the accepted ones:
        the same, or a token_sort_ratio of at least ``dedupe_threshold``."""
        fuzzy = self.dedupe_threshold < 100
        if extra and (norm in extra or fuzzy and process.extractOne(
                norm, extra, scorer=fuzz.token_sort_ratio, processor=None, score_cutoff=self.dedupe_threshold)):
            return True
        return bool(self.accepted) and (norm in self.accepted or fuzzy and process.extractOne(
            _sorted_words(norm), self._sorted, scorer=fuzz.ratio, processor=None,
            score_cutoff=self.dedupe_threshold) is not None)

    def accept(self, norm: str) -> None:
        self.accepted.append(norm)
        self._sorted.append(_sorted_words(norm))

    def is_duplicate_turns(self, norms: list[str], extra: list[str] = ()) -> bool:
        """Whether any of ``norms`` (a conversation's user turns, see :func:`turn_norms`) is a
        duplicate (:meth:`is_duplicate`)."""
        return any(self.is_duplicate(n, extra) for n in norms)

    def accept_turns(self, norms: list[str]) -> None:
        for n in norms:
            self.accept(n)


def turn_norms(pair: Pair, norm: str | None = None) -> list[str]:
    """The normalized question of every user turn of ``pair`` (one for a single-turn pair);
    ``norm``: the first question's, when already worked out."""
    first = normalize_question(pair.question) if norm is None else norm
    return [first, *(normalize_question(q) for q, _ in pair.followups)] if pair.followups else [first]


def _sorted_words(norm: str) -> str:
    return " ".join(sorted(norm.split(" ")))


def most_similar(query: str, questions: list[str], limit: int) -> list[str]:
    """The ``limit`` questions most related to ``query`` (e.g. a chunk's text)."""
    if limit <= 0 or not questions:
        return []
    found = process.extract(query, questions, scorer=fuzz.token_set_ratio, processor=utils.default_process, limit=limit)
    return [questions[idx] for _, _, idx in sorted(found, key=lambda r: (-r[1], r[2]))]
