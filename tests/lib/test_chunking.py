from datakeg.sources.chunking import chunk_text

MD = """---
title: front matter is not content
---

# Install

Intro paragraph that is long enough to keep the install section apart from its subsections when chunks are small.

## From source

```shell
# this comment is not a heading
make install
```

| a | b |
|---|---|
| 1 | 2 |

## From pip

Run pip to install the released version; this paragraph is long enough that it cannot share a chunk with the section before it.
"""


def test_breadcrumbs_and_front_matter():
    chunks = chunk_text(MD, "md", chunk_size=200)
    assert all("front matter is not content" not in c.text for c in chunks)
    crumbs = [c.breadcrumb for c in chunks]
    assert crumbs == ["Install", "Install > From source", "Install > From pip"]
    src = next(c for c in chunks if c.breadcrumb == "Install > From source")
    assert "# this comment is not a heading\nmake install\n```" in src.text
    assert "| 1 | 2 |" in src.text and "|---|---|" in src.text


def test_small_sections_are_packed_under_common_breadcrumb():
    chunks = chunk_text(MD, "md", chunk_size=4000)
    assert len(chunks) == 1
    assert chunks[0].breadcrumb == "Install"
    assert chunks[0].text.startswith("# Install")


def test_code_fence_and_table_never_split_even_when_oversized():
    fence = "```python\n" + "\n".join(f"x{i} = {i}  # filler line" for i in range(60)) + "\n```"
    table = "| k | v |\n|---|---|\n" + "\n".join(f"| key{i} | value {i} |" for i in range(60))
    doc = f"# T\n\nSome text.\n\n{fence}\n\nMiddle text.\n\n{table}\n\nEnd.\n"
    chunks = chunk_text(doc, "md", chunk_size=300)
    assert any(fence in c.text for c in chunks)
    assert any(table in c.text for c in chunks)
    for c in chunks:
        # every chunk fits unless it is exactly one unsplittable block
        assert len(c.text) <= 300 or c.text.strip() in (fence, table)


def test_long_list_splits_between_items_only():
    items = [f"- item {i}: " + "word " * 12 for i in range(30)]
    doc = "# List\n\n" + "\n".join(items) + "\n"
    chunks = chunk_text(doc, "md", chunk_size=400)
    assert len(chunks) > 1
    joined = "\n".join(c.text for c in chunks)
    for item in items:
        assert item.rstrip() in joined  # no item cut in half
    assert all(len(c.text) <= 400 for c in chunks)


def test_long_paragraph_splits_at_sentences():
    doc = "# P\n\n" + " ".join(f"Sentence number {i} is here." for i in range(100)) + "\n"
    chunks = chunk_text(doc, "md", chunk_size=500)
    assert len(chunks) > 2 and all(len(c.text) <= 500 for c in chunks)
    assert all(c.text.rstrip().endswith(".") for c in chunks)


def test_txt_paragraphs_and_rst_titles():
    doc = "Guide\n=====\n\nFirst para.\n\nSection\n-------\n\n" + "\n\n".join(f"Para {i} " + "x " * 50 for i in range(10))
    chunks = chunk_text(doc, "txt", chunk_size=300)
    assert chunks[0].breadcrumb.startswith("Guide")
    assert any(c.breadcrumb == "Guide > Section" for c in chunks)
    assert all(len(c.text) <= 300 for c in chunks)
    assert sum(c.text.count("Para ") for c in chunks) == 10


def test_corpus_chunks_respect_size(corpus):
    for path in sorted(corpus.rglob("*.*")):
        text = path.read_text(encoding="utf-8")
        chunks = chunk_text(text, "txt" if path.suffix == ".txt" else "md", 4000)
        assert chunks, path
        assert all(len(c.text) <= 4000 for c in chunks), path
        # code fences stay balanced inside every chunk
        assert all(c.text.count("```") % 2 == 0 for c in chunks), path


def test_heading_breadcrumbs_drop_inline_markup_and_resolve_reference_links():
    """Headings are parsed for their text alone (the block parse skips inline markup), with the
    document's link reference definitions."""
    from datakeg.sources.chunking import _md_units

    units = _md_units("# [Foo][r] and [Bar] `x` *em*\n\ntext\n\n[r]: http://a\n[bar]: http://b\n")
    assert units[0].heading == (1, "Foo and Bar x em")
