"""The dataset card: ``OUT/README.md``, so that OUT is a Hugging Face dataset as it stands.

Its YAML front matter maps the merged files to the splits (``configs``/``data_files``), so
``datasets.load_dataset("OUT")`` (or a push of OUT to the Hub) gives exactly ``train``,
``validation`` and ``test`` with the rows of ``train.jsonl``, ``valid.jsonl`` and ``test.jsonl``,
and not the per-file outputs, ``rejects.jsonl`` or ``manifest.json`` lying beside them. The body
says what a dataset card should: source, provider and model, settings, rows per split, drops by
reason, the datakeg version, and the license of the documents (a placeholder the user fills in).

Written after every change of the merged files (``generate``, ``merge``, ``audit --remove``).
Hand edits are never lost without a word:

* a ``README.md`` without datakeg's marker comment is someone else's: it is left alone (and the
  caller is told the card was not written);
* two regions are the user's and are carried over verbatim when datakeg rewrites its card: the
  front-matter lines after ``# --- your keys`` and the body between ``<!-- datakeg:user:start -->``
  and ``<!-- datakeg:user:end -->`` (where the license and citation go);
* anything else edited by hand (detected by a hash of datakeg's part, kept in the marker) stops
  the rewrite: the fresh card goes to ``README.datakeg.md`` and the caller is told.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from datakeg.dataset.atomic import atomic_write_text
from datakeg.dataset.jsonl import load_rows
from datakeg.dataset.writers import MANIFEST

CARD = "README.md"
ASIDE = "README.datakeg.md"  # where a fresh card goes when the user edited datakeg's part
SPLIT_FILES = (("train", "train.jsonl"), ("validation", "valid.jsonl"), ("test", "test.jsonl"))
MARKER = "datakeg:card"
USER_KEYS = "# --- your keys (kept when datakeg rewrites this card): uncomment and fill in ---"
USER_START = "<!-- datakeg:user:start -->"
USER_END = "<!-- datakeg:user:end -->"
_MARKER_RE = re.compile(r"<!-- datakeg:card sha256=([0-9a-f]{16})")

DEFAULT_USER_KEYS = """\
# license: cc-by-4.0        # the license of your source documents (Hub license id), see below
# language: [en]
# pretty_name: My docs QA"""

DEFAULT_USER_BODY = """\
## License and citation

> **TO FILL IN (datakeg cannot know this):** these pairs are derived from the source documents
> named above, so they carry the documents' license. State it here (e.g. "CC BY 4.0, © The
> Tallyho authors"), link the original, and say how to cite it. Set the same license id as
> `license:` in the front matter above. Edit only between the `datakeg:user` markers: datakeg
> keeps this part (and the keys under "your keys" in the front matter) when it rewrites this card."""


def _rows(path: Path) -> int:
    if not path.exists():
        return 0
    return sum(1 for _ in load_rows(path))


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "n>1M"


def _split_card(text: str) -> tuple[str, str] | None:
    """(front matter, body) of a card with front matter, else None."""
    if not text.startswith("---\n"):
        return None
    end = text.find("\n---\n", 4)
    if end < 0:
        return None
    return text[4:end + 1], text[end + 5:]


def _user_parts(text: str) -> tuple[str | None, str | None]:
    """The user's front-matter keys and body region of an existing datakeg card."""
    parts = _split_card(text)
    keys = body = None
    if parts:
        front, rest = parts
        if USER_KEYS in front:
            keys = front.split(USER_KEYS, 1)[1].strip("\n")
        if USER_START in rest and USER_END in rest.split(USER_START, 1)[1]:
            body = rest.split(USER_START, 1)[1].split(USER_END, 1)[0].strip("\n")
    return keys, body


def _datakeg_part(text: str) -> str:
    """The card without the user's regions and without the marker's own hash."""
    keys, body = _user_parts(text)
    if keys is not None:
        text = text.replace(keys, "", 1)
    if body is not None:
        text = text.replace(body, "", 1)
    return _MARKER_RE.sub("<!-- datakeg:card sha256=", text)


def _digest(text: str) -> str:
    return hashlib.sha256(_datakeg_part(text).encode("utf-8")).hexdigest()[:16]


def is_datakeg_card(path: Path) -> bool:
    """True for a README.md that datakeg wrote (it carries datakeg's marker comment)."""
    try:
        return _MARKER_RE.search(Path(path).read_text(encoding="utf-8", errors="replace")[:20000]) is not None
    except OSError:
        return False


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if value is None:
        return "-"
    return str(value).replace("|", "\\|").replace("\n", " ")


def render(out: Path, manifest: dict | None = None, user_keys: str | None = None,
           user_body: str | None = None) -> str:
    """The card text for OUT (rows counted from the merged files; the rest from the manifest)."""
    from datakeg import __version__

    out = Path(out)
    if manifest is None and (out / MANIFEST).exists():
        try:
            manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            manifest = None
    m = manifest or {}
    counts = {split: _rows(out / name) for split, name in SPLIT_FILES}
    total = sum(counts.values())
    settings = m.get("settings") or {}
    totals = m.get("totals") or {}
    fmt = settings.get("format", "completion")
    source = m.get("source") or "unknown (no manifest.json)"
    tasks = ["question-answering"] if fmt == "reasoning" and settings.get("reasoning_format") == "separate" \
        else ["text-generation", "question-answering"]
    # `datasets` refuses a split with no rows ("corresponds to no data"): list only the others
    listed = [(split, name) for split, name in SPLIT_FILES if counts[split]] or list(SPLIT_FILES)
    data_files = "\n".join(f"  - split: {split}\n    path: {name}" for split, name in listed)
    front = (f"configs:\n- config_name: default\n  data_files:\n{data_files}\n"
             "task_categories:\n" + "".join(f"- {t}\n" for t in tasks) +
             f"size_categories:\n- {_size_category(total)}\ntags:\n- datakeg\n- synthetic\n- documentation\n"
             f"{USER_KEYS}\n{DEFAULT_USER_KEYS if user_keys is None else user_keys}\n")

    rows_table = "\n".join(f"| {split} | `{name}` | {counts[split]} |" for split, name in SPLIT_FILES)
    empty = [split for split, _ in SPLIT_FILES if (split, dict(SPLIT_FILES)[split]) not in listed]
    if empty:
        rows_table += (f"\n\nEmpty, so left out of the front matter's `configs` (`datasets` cannot load a split "
                       f"with no rows): {', '.join(empty)}.")
    target = totals.get("target") or {}
    if target:
        rows_table += ("\n\nTargets at generation: " + ", ".join(f"{s} {target.get(s, 0)}" for s in
                                                                 ("train", "valid", "test")) + ".")
    dropped = totals.get("dropped") or {}
    drops = ", ".join(f"{k} {v}" for k, v in dropped.items()) if dropped else "none"
    shown = {k: v for k, v in settings.items() if v is not None}
    settings_table = "\n".join(f"| `{k}` | {_fmt(v)} |" for k, v in shown.items()) or "| - | - |"
    # what making the dataset cost, over every run into OUT (manifest usage.total), else this run's
    spent = ((m.get("usage") or {}).get("total") if isinstance(m.get("usage"), dict) else None) or totals
    audit = m.get("leakage_audit") or {}
    audit_line = (f"Leakage audit (TF-IDF char n-gram cosine >= {_fmt(audit.get('threshold'))}): removed "
                  f"{sum((audit.get('removed') or {}).values())} pair(s) in {audit.get('rounds', 0)} round(s)."
                  if audit else "Leakage audit: not run.")
    from datakeg.dataset.review_journal import journal_path, summary

    review_line = ""
    if journal_path(out).exists():
        r = summary(out)
        review_line = (f"\n- Human review (`datakeg review`): {r['reviewed']} pair(s) reviewed: {r['kept']} kept, "
                       f"{r['edited']} edited, {r['rejected']} rejected, {r['restored']} restored from the dropped pairs")
    taught = m.get("taught") or {}
    shares = [f"{sp} {taught[sp]['share']:.0%} ({taught[sp]['taught']} of {taught[sp]['traced']})"
              for sp in ("valid", "test") if isinstance(taught.get(sp), dict) and taught[sp].get("share") is not None]
    taught_line = (f"Learnable held-out questions (answer taught by a train pair of the same chunk; "
                   f"{taught.get('rule', '')}): {', '.join(shares)}." if shares else
                   "Learnable held-out questions: not measured.")
    files = m.get("files") or []
    file_lines = "\n".join(f"  - `{f.get('path', '?')}`" for f in files[:50])
    if len(files) > 50:
        file_lines += f"\n  - ... and {len(files) - 50} more (see `manifest.json`)"

    body = f"""
# Question-answer pairs generated by datakeg

Synthetic question-answer pairs generated from documentation by
[datakeg](https://pypi.org/project/datakeg/) {__version__}: each pair was written by a language model
from one excerpt of the source documents, checked by deterministic quality gates (duplicates,
grounding in the excerpt, length) and a leakage audit between the splits. Review a sample before
you train on it: a model wrote these.

## Loading

```python
from datasets import load_dataset

ds = load_dataset("path/to/this/folder")   # or the Hub id after you push it
print(ds)                                  # train, validation, test
```

## Splits

| split | file | rows |
|---|---|---:|
{rows_table}

Row format: `{fmt}`{f" ({settings.get('reasoning_format')})" if fmt == "reasoning" else ""}. The
per-document files (`<name>_train.jsonl`, ...) beside the merged ones, `rejects.jsonl` and
`manifest.json` are not part of the splits.

## Source

- Documents: `{_fmt(source)}` ({len(files)} file(s))
{file_lines}

## How it was made

- Provider: `{_fmt(m.get('provider'))}`, model: `{_fmt(m.get('model'))}`
- datakeg {__version__} (generated with {_fmt(m.get('datakeg_version'))}, prompt version
  {_fmt(m.get('prompt_version'))}), {_fmt(m.get('created'))}
- Requests: {_fmt(spent.get('requests'))}; tokens: {_fmt(spent.get('prompt_tokens'))} prompt +
  {_fmt(spent.get('completion_tokens'))} completion (all runs into this folder; a resumed run
  replays finished requests for free)
- Dropped by reason: {drops}
- {audit_line}{review_line}
- {taught_line}
{_task_line(m)}
| setting | value |
|---|---|
{settings_table}

{USER_START}
{DEFAULT_USER_BODY if user_body is None else user_body}
{USER_END}
"""
    text = f"---\n{front}---\n<!-- datakeg:card sha256=0000000000000000 (written by datakeg: it rewrites this " \
           f"file with the merged files, keeping the user regions) -->\n{body}"
    return _MARKER_RE.sub(f"<!-- datakeg:card sha256={_digest(text)}", text, count=1)


def _task_line(m: dict) -> str:
    """The task the pairs were asked with (``generate --task``): name, content hash, turns, and the
    mix of kinds asked and delivered per split (nothing for a manifest without a task)."""
    task = m.get("task")
    if not isinstance(task, dict):
        return ""
    line = f"- Task: `{_fmt(task.get('name'))}` (sha256 {_fmt(str(task.get('sha256', ''))[:12])}"
    line += f", {task['turns']} turns per conversation)" if (task.get("turns") or 1) > 1 else ")"
    mix = task.get("mix") or {}
    if mix:
        line += "; kinds asked: " + ", ".join(f"{_fmt(k)} {100 * v:.0f}%" for k, v in mix.items())
        for sp, kinds in ((m.get("coverage") or {}).get("task_kinds") or {}).items():
            line += f"; {sp} delivered: " + ", ".join(f"{_fmt(k)} {100 * (r.get('delivered_share') or 0):.0f}%"
                                                      for k, r in kinds.items())
    if task.get("audiences"):
        line += "; audiences: " + "; ".join(_fmt(a) for a in task["audiences"])
    return line + "\n"


def write_card(out: Path, manifest: dict | None = None) -> str | None:
    """Write or refresh ``OUT/README.md``. Returns None when the card was written, else a message
    saying why not and where the fresh card went (for the caller to show as a warning)."""
    out = Path(out)
    path = out / CARD
    user_keys = user_body = None
    if path.exists():
        try:
            old = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            old = ""
        found = _MARKER_RE.search(old)
        if found is None:
            return (f"{path} was not written by datakeg; left as it is, so OUT has no dataset card. Move it "
                    f"away and run `datakeg merge {out}` to get one.")
        user_keys, user_body = _user_parts(old)
        if found.group(1) != _digest(old):
            atomic_write_text(out / ASIDE, [render(out, manifest, user_keys, user_body)])
            return (f"{path} was edited outside its user regions; left as it is. The updated card is in "
                    f"{out / ASIDE}: merge your edits into it and rename it to README.md (edits between "
                    f"the datakeg:user markers are kept automatically).")
    atomic_write_text(path, [render(out, manifest, user_keys, user_body)])
    return None


__all__ = ["CARD", "ASIDE", "is_datakeg_card", "render", "write_card"]
