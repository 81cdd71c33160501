"""Quality gates applied to every pair before it is accepted.

* ``too_short``: empty or trivially short question/answer;
* ``duplicate``: the question is an exact or near duplicate (rapidfuzz, 0-100 scale) of one
  already accepted for the document in any split, or of another question in the same reply;
* ``ungrounded``: most content words of the answer do not occur in the chunk. Cheap and
  deterministic: no model is asked; inflected forms match on a shared 5-letter prefix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from rapidfuzz import fuzz, process, utils

from datakeg.records import Pair

_WORD = re.compile(r"\w+", re.UNICODE)

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


class Grounding:
    """Checks answers against one chunk's vocabulary."""

    def __init__(self, chunk_text: str):
        words = set(_WORD.findall(chunk_text.lower()))
        self.words = words
        self.prefixes = {w[:5] for w in words if len(w) >= 5}

    def score(self, answer: str) -> float:
        """Share of the answer's content words found in the chunk (1.0 for no content words)."""
        words = content_words(answer)
        if not words:
            return 1.0
        hits = sum(1 for w in words if w in self.words or (len(w) >= 5 and w[:5] in self.prefixes))
        return hits / len(words)


@dataclass
class Gate:
    """Filters pairs for one document, remembering every accepted question (all splits)."""

    dedupe_threshold: float = 90.0
    grounding_threshold: float = 0.5  # 0 switches the check off
    min_question_chars: int = 10
    min_answer_chars: int = 2
    accepted: list[str] = field(default_factory=list)  # normalized accepted questions

    def check(self, pair: Pair, grounding: Grounding | None, batch: list[str]) -> str | None:
        """Return the reason to drop ``pair`` or None to keep it. ``batch``: normalized questions
        already kept from the same reply."""
        q, a = pair.question.strip(), pair.answer.strip()
        if len(q) < self.min_question_chars or len(a) < self.min_answer_chars:
            return "too_short"
        norm = normalize_question(q)
        if not norm:
            return "too_short"
        if self.is_duplicate(norm, batch):
            return "duplicate"
        if grounding is not None and self.grounding_threshold > 0:
            if grounding.score(a) < self.grounding_threshold:
                return "ungrounded"
        return None

    def is_duplicate(self, norm: str, extra: list[str] = ()) -> bool:
        for pool in (extra, self.accepted):
            if not pool:
                continue
            if norm in pool:
                return True
            if self.dedupe_threshold < 100 and process.extractOne(
                norm, pool, scorer=fuzz.token_sort_ratio, processor=None, score_cutoff=self.dedupe_threshold
            ):
                return True
        return False

    def accept(self, norm: str) -> None:
        self.accepted.append(norm)


def most_similar(query: str, questions: list[str], limit: int) -> list[str]:
    """The ``limit`` questions most related to ``query`` (e.g. a chunk's text)."""
    if limit <= 0 or not questions:
        return []
    found = process.extract(query, questions, scorer=fuzz.token_set_ratio, processor=utils.default_process, limit=limit)
    return [questions[idx] for _, _, idx in sorted(found, key=lambda r: (-r[1], r[2]))]
