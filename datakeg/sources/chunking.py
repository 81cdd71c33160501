"""Split a document into chunks that respect its structure.

Markdown is parsed with markdown-it-py (CommonMark + tables + front matter). Chunks break at
headings; a chunk holds whole top-level blocks, so a fenced code block, a table or a list item
is never cut in half (a single block larger than ``chunk_size`` becomes its own, oversized,
chunk; a long list is split between items, a long paragraph between sentences). Each chunk
carries its heading breadcrumb, e.g. ``Install > From source``.

Plain text splits on blank-line paragraphs; reStructuredText-style underlined titles
(``Title`` over ``=====``) are recognised as headings for the breadcrumb.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

DEFAULT_CHUNK_SIZE = 4000


@dataclass(frozen=True)
class Chunk:
    index: int
    text: str
    breadcrumb: str

    def __len__(self) -> int:
        return len(self.text)


@dataclass
class _Unit:
    text: str
    heading: tuple[int, str] | None = None  # (level, title) when the unit is a heading
    parts: list[str] = field(default_factory=list)  # safe split points (list items, sentences)
    sep: str = "\n"  # how parts are re-joined


@dataclass
class _Section:
    breadcrumb: tuple[str, ...]
    units: list[_Unit]

    @property
    def size(self) -> int:
        return sum(len(u.text) for u in self.units) + 2 * max(0, len(self.units) - 1)

    @property
    def heading_only(self) -> bool:
        return all(u.heading for u in self.units)


@lru_cache(maxsize=None)
def _markdown_parser(inline: bool = False):
    """Block structure only by default: inline markup (half the parse time) is parsed for headings
    alone, by the ``inline=True`` parser."""
    from markdown_it import MarkdownIt
    from mdit_py_plugins.front_matter import front_matter_plugin

    md = MarkdownIt("commonmark").enable("table").use(front_matter_plugin)
    return md if inline else md.disable("inline")


def _inline_text(token, env: dict) -> str:
    """A heading's text without its markup (``env``: the document's parse environment, which holds
    its link reference definitions)."""
    children = _markdown_parser(inline=True).parseInline(token.content, env)[0].children if token.content else None
    if not children:
        return token.content.strip()
    return "".join(c.content for c in children if c.type in ("text", "code_inline")).strip()


_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+")


def _md_units(text: str) -> list[_Unit]:
    lines = text.split("\n")
    env: dict = {}
    tokens = _markdown_parser().parse(text, env)
    units: list[_Unit] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.level != 0 or tok.nesting == -1 or tok.map is None:
            i += 1
            continue
        start, end = tok.map
        body = "\n".join(lines[start:end]).strip("\n")
        if tok.type == "front_matter":
            pass  # metadata, not content
        elif tok.type == "heading_open":
            title = _inline_text(tokens[i + 1], env) or body.strip("# ")
            units.append(_Unit(body, heading=(int(tok.tag[1:]), title)))
        elif tok.type in ("bullet_list_open", "ordered_list_open"):
            items = [
                "\n".join(lines[t.map[0] : t.map[1]]).strip("\n")
                for t in tokens[i + 1 :]
                if t.type == "list_item_open" and t.level == 1 and t.map
                and t.map[0] >= start and t.map[1] <= end
            ]
            units.append(_Unit(body, parts=items))
        elif tok.type == "paragraph_open":
            units.append(_Unit(body, parts=_SENTENCE_END.split(body), sep=" "))
        elif body.strip():
            units.append(_Unit(body))  # fence, table, html_block, blockquote, hr, code_block
        i += 1  # tokens nested inside this block have level > 0 and are skipped above
    return units


_RST_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+:.])\1{2,}\s*$")


def _txt_units(text: str) -> list[_Unit]:
    units: list[_Unit] = []
    adornments: list[str] = []
    for para in re.split(r"\n\s*\n", text):
        para = para.strip("\n")
        if not para.strip():
            continue
        lines = para.split("\n")
        # RST title: optional overline, title, underline of the same character.
        if len(lines) in (2, 3) and _RST_UNDERLINE.match(lines[-1]) and lines[-2].strip():
            char = lines[-1].strip()[0]
            key = char + ("o" if len(lines) == 3 else "")
            if key not in adornments:
                adornments.append(key)
            units.append(_Unit(para, heading=(adornments.index(key) + 1, lines[-2].strip())))
            continue
        units.append(_Unit(para, parts=_SENTENCE_END.split(para), sep=" "))
    return units


def _sections(units: list[_Unit]) -> list[_Section]:
    sections: list[_Section] = []
    stack: list[tuple[int, str]] = []
    current = _Section((), [])
    for unit in units:
        if unit.heading:
            if current.units:
                sections.append(current)
            level, title = unit.heading
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, title))
            current = _Section(tuple(t for _, t in stack), [unit])
        else:
            current.units.append(unit)
    if current.units:
        sections.append(current)
    # A heading followed directly by a sub-heading is glued to the next section.
    merged: list[_Section] = []
    pending: list[_Unit] = []
    for sec in sections:
        if sec.heading_only:
            pending.extend(sec.units)
            continue
        merged.append(_Section(sec.breadcrumb, pending + sec.units))
        pending = []
    if pending:
        if merged:
            merged[-1].units.extend(pending)
        else:
            merged.append(_Section((), pending))
    return merged


def _split_text(text: str, size: int) -> list[str]:
    """Last resort for a sentence longer than ``size``: cut at whitespace."""
    pieces, rest = [], text
    while len(rest) > size:
        cut = rest.rfind(" ", 0, size)
        cut = cut if cut > size // 2 else size
        pieces.append(rest[:cut].strip())
        rest = rest[cut:].strip()
    return pieces + ([rest] if rest else [])


def _pack(pieces: list[str], size: int, sep: str) -> list[str]:
    out: list[str] = []
    cur = ""
    for piece in pieces:
        if cur and len(cur) + len(sep) + len(piece) > size:
            out.append(cur)
            cur = piece
        else:
            cur = f"{cur}{sep}{piece}" if cur else piece
    if cur:
        out.append(cur)
    return out


def _fit(unit: _Unit, size: int) -> list[str]:
    """Split one oversized unit at its safe points; blocks without any (code, tables) stay whole."""
    if len(unit.text) <= size or not unit.parts:
        return [unit.text]
    pieces: list[str] = []
    for part in unit.parts:
        # only a single over-long sentence is cut further; a list item is never cut
        pieces.extend(_split_text(part, size) if len(part) > size and unit.sep == " " else [part])
    return _pack(pieces, size, unit.sep)


def _common_prefix(crumbs: list[tuple[str, ...]]) -> tuple[str, ...]:
    prefix = crumbs[0]
    for c in crumbs[1:]:
        n = 0
        while n < min(len(prefix), len(c)) and prefix[n] == c[n]:
            n += 1
        prefix = prefix[:n]
    return prefix or next((c for c in crumbs if c), ())


def chunk_text(text: str, kind: str = "md", chunk_size: int = DEFAULT_CHUNK_SIZE) -> list[Chunk]:
    """Chunk a document. ``kind`` is ``"md"`` or ``"txt"``."""
    if chunk_size < 200:
        raise ValueError("chunk_size must be at least 200 characters")
    units = _md_units(text) if kind == "md" else _txt_units(text)
    sections = _sections(units)

    chunks: list[tuple[tuple[str, ...], str]] = []
    cur_texts: list[str] = []
    cur_crumbs: list[tuple[str, ...]] = []

    def flush():
        if cur_texts:
            chunks.append((_common_prefix(cur_crumbs), "\n\n".join(cur_texts)))
            cur_texts.clear()
            cur_crumbs.clear()

    def cur_size() -> int:
        return sum(len(t) for t in cur_texts) + 2 * max(0, len(cur_texts) - 1)

    for sec in sections:
        if cur_texts and cur_size() + 2 + sec.size > chunk_size:
            flush()
        if sec.size <= chunk_size:
            cur_texts.extend(u.text for u in sec.units)
            cur_crumbs.append(sec.breadcrumb)
            continue
        # Oversized section: fill chunks unit by unit, splitting units only at safe points.
        for unit in sec.units:
            for piece in _fit(unit, chunk_size):
                if cur_texts and cur_size() + 2 + len(piece) > chunk_size:
                    # never leave a heading alone at the end of a chunk
                    carry = []
                    while cur_texts and cur_texts[-1] in [u.text for u in sec.units if u.heading]:
                        carry.insert(0, cur_texts.pop())
                    flush()
                    cur_texts.extend(carry)
                cur_texts.append(piece)
                if not cur_crumbs or cur_crumbs[-1] != sec.breadcrumb:
                    cur_crumbs.append(sec.breadcrumb)
        flush()
    flush()
    return [Chunk(i, body, " > ".join(crumb)) for i, (crumb, body) in enumerate(chunks) if body.strip()]
