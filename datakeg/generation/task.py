"""Task files: what the model is asked to write (``generate --task FILE|NAME``).

A task is a TOML file (see the built-ins in ``datakeg/generation/tasks/`` and the README's "Task
files"): the system prompt, the instructions as a Jinja2 template (sandboxed, ``StrictUndefined``,
``trim_blocks``/``lstrip_blocks``: a ``{% ... %}`` line leaves no blank line), the audiences, the
mix of question kinds with weights, the answer style, few-shot examples and the number of turns.

Fields the instructions may use (any other name is an error that names it):
  source, section, tag, excerpt   where the chunk comes from, and the chunk between <tag> ... </tag>
  count, split, language          how many pairs (conversations) this request wants, for which split
  avoid                           questions not to repeat (one line each)
  reasoning                       true with --format reasoning
  fields, example                 the JSON fields the reply must have, and an example reply
  turns                           user turns per conversation (1 = question-answer pairs)
  kinds                           the kinds asked for in this request: [{name, description, count}]
  audience                        who asks in this request ("" when the task names none)
  style                           {min_words, max_words, quote_commands}
  examples                        the few-shot examples: [{question, answer, kind?, followups?}]

A task is identified by its content, never its path: :attr:`Task.sha256` hashes the parsed file
(comments and layout aside), and the run fingerprint holds it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from datakeg.errors import ConfigError

TASKS_DIR = Path(__file__).parent / "tasks"
DEFAULT_TASK = "qa"
MAX_TURNS = 10

FIELDS = ("source", "section", "tag", "excerpt", "count", "split", "language", "avoid", "reasoning", "fields",
          "example", "turns", "kinds", "audience", "style", "examples")

# the kinds the issue names: a task may give only their weight
BUILTIN_KINDS = {
    "factual": "asks for a fact the excerpt states (a value, a default, a name, a limit)",
    "how-to": "asks how to do something with the software; the answer gives the steps or the command",
    "troubleshooting": "describes a problem, error or unexpected result and asks how to fix or explain it",
    "conceptual": "asks what something is or why it works the way it does",
    "comparison": "asks how two options, commands or approaches differ, or when to use which",
    "code": "asks for a command, configuration snippet or code line; the answer quotes it",
}

_TOP_KEYS = {"name", "description", "system", "instructions", "turns", "audiences", "answer", "kinds", "examples"}
_ANSWER_KEYS = {"min_words", "max_words", "quote_commands"}


@dataclass(frozen=True)
class Kind:
    name: str
    weight: float
    description: str
    match: str | None = None  # optional regex the question must match to count as this kind


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    system: str
    instructions: str
    origin: str  # "built-in" or the file's path (for messages only: never part of the identity)
    text: str  # the file as written (what `datakeg tasks show` prints)
    data: dict = field(repr=False, compare=False, hash=False, default_factory=dict)
    turns: int = 1
    audiences: tuple[str, ...] = ()
    kinds: tuple[Kind, ...] = ()
    min_words: int = 0
    max_words: int = 0
    quote_commands: bool = False
    examples: tuple[dict, ...] = ()

    @property
    def sha256(self) -> str:
        """Hash of the task's content (the parsed file, canonical JSON): the same for the same task
        wherever it lies and however it is laid out; a changed word changes it."""
        blob = json.dumps(self.data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    @property
    def mix(self) -> dict[str, float]:
        """The asked share of each kind (weights normalised to 1), in the file's order."""
        total = sum(k.weight for k in self.kinds)
        return {k.name: k.weight / total for k in self.kinds}

    def identity(self) -> dict:
        """What the run fingerprint, the manifest and the card record."""
        out = {"name": self.name, "sha256": self.sha256, "turns": self.turns}
        if self.kinds:
            out["mix"] = {k: round(v, 6) for k, v in self.mix.items()}
        if self.audiences:
            out["audiences"] = list(self.audiences)
        return out

    def kind_named(self, label) -> Kind | None:
        """The task's kind a model's label names (case, spaces, ``_`` and ``-`` ignored)."""
        if not isinstance(label, str):
            return None
        key = _kind_key(label)
        return next((k for k in self.kinds if _kind_key(k.name) == key), None)

    def recognise(self, question: str, label) -> str | None:
        """The kind a delivered pair counts as: the label the model gave it, when that names one of
        the task's kinds and (for a kind with ``match``) the question matches the kind's pattern;
        None (unrecognised) otherwise."""
        kind = self.kind_named(label)
        if kind is None:
            return None
        if kind.match and not re.search(kind.match, question, re.IGNORECASE):
            return None
        return kind.name

    def answer_length_ok(self, answer: str) -> bool:
        n = count_words(answer)
        return (not self.min_words or n >= self.min_words) and (not self.max_words or n <= self.max_words)

    # -- rendering ------------------------------------------------------------------------
    def render(self, **values) -> str:
        return _compiled(self.instructions).render(**values)


_CJK_RUN = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]+")


def count_words(text: str) -> int:
    """Words for the answer length bounds: whitespace-separated words, where Chinese, Japanese and
    Korean text (no spaces) counts one word per two characters, rounded up."""
    cjk = _CJK_RUN.findall(text)
    rest = _CJK_RUN.sub(" ", text)
    return len(rest.split()) + sum((len(r) + 1) // 2 for r in cjk)


def _kind_key(name: str) -> str:
    return re.sub(r"[\s_-]+", "-", name.strip().lower())


# -- loading -----------------------------------------------------------------------------
def builtin_names() -> list[str]:
    return sorted(p.stem for p in TASKS_DIR.glob("*.toml"))


def builtin_tasks() -> list[Task]:
    return [load_task(n) for n in builtin_names()]


def load_task(spec: str | Path | None = None) -> Task:
    """A built-in task by name, or a task file by path. Raises ConfigError (one line, exit 2)
    for a missing file, a TOML syntax error (with its line), a missing or unknown field, a
    template field that does not exist, a template without the excerpt or bad weights."""
    spec = DEFAULT_TASK if spec is None else spec
    text_spec = str(spec)
    if isinstance(spec, str) and re.fullmatch(r"[A-Za-z0-9_-]+", spec) and (TASKS_DIR / f"{spec}.toml").is_file():
        return _load_builtin(spec)
    path = Path(spec)
    if not path.is_file():
        known = ", ".join(builtin_names())
        raise ConfigError(f"--task {text_spec}: no such task file or built-in task",
                          f"Built-in tasks: {known} (`datakeg tasks` lists them); or give the path of a TOML task file.")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--task {path}: cannot read it: {exc}") from None
    return parse_task(text, str(path))


@functools.lru_cache(maxsize=None)
def _load_builtin(name: str) -> Task:
    return parse_task((TASKS_DIR / f"{name}.toml").read_text(encoding="utf-8"), "built-in")


def parse_task(text: str, origin: str) -> Task:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib

    where = "built-in task" if origin == "built-in" else f"task file {origin}"

    def fail(message: str, hint: str = "See `datakeg tasks show qa` for a working task file and the "
                                       "README's \"Task files\" for every field.") -> ConfigError:
        return ConfigError(f"{where}: {message}", hint)

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise fail(f"TOML syntax error: {exc}") from None  # the message holds "(at line N, column M)"
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise fail(f"unknown field {unknown[0]!r}", f"Known fields: {', '.join(sorted(_TOP_KEYS))}.")
    for key in ("name", "description", "instructions"):
        if key not in data:
            raise fail(f"the field {key!r} is missing")
        if not isinstance(data[key], str) or not data[key].strip():
            raise fail(f"the field {key!r} must be non-empty text")
    system = data.get("system", "")
    if not isinstance(system, str):
        raise fail("the field 'system' must be text")
    turns = data.get("turns", 1)
    if isinstance(turns, bool) or not isinstance(turns, int) or not 1 <= turns <= MAX_TURNS:
        raise fail(f"'turns' must be a whole number from 1 to {MAX_TURNS}, got {turns!r}")
    audiences = data.get("audiences", [])
    if not isinstance(audiences, list) or not all(isinstance(a, str) and a.strip() for a in audiences):
        raise fail("'audiences' must be a list of non-empty texts, e.g. [\"a new user\", \"an operator\"]")
    answer = data.get("answer", {})
    if not isinstance(answer, dict):
        raise fail("'answer' must be a table: [answer] with min_words, max_words, quote_commands")
    bad = sorted(set(answer) - _ANSWER_KEYS)
    if bad:
        raise fail(f"unknown field 'answer.{bad[0]}'", f"[answer] takes: {', '.join(sorted(_ANSWER_KEYS))}.")
    bounds = {}
    for key in ("min_words", "max_words"):
        v = answer.get(key, 0)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise fail(f"'answer.{key}' must be a whole number of words (0 = no bound), got {v!r}")
        bounds[key] = v
    if bounds["min_words"] and bounds["max_words"] and bounds["min_words"] > bounds["max_words"]:
        raise fail(f"'answer.min_words' ({bounds['min_words']}) is above 'answer.max_words' ({bounds['max_words']})")
    quote = answer.get("quote_commands", False)
    if not isinstance(quote, bool):
        raise fail(f"'answer.quote_commands' must be true or false, got {quote!r}")
    kinds = _kinds(data.get("kinds", {}), fail)
    examples = data.get("examples", [])
    if not isinstance(examples, list):
        raise fail("'examples' must be a list of [[examples]] tables with question and answer")
    for n, ex in enumerate(examples, 1):
        if not isinstance(ex, dict) or not all(isinstance(ex.get(k), str) and ex[k].strip()
                                               for k in ("question", "answer")):
            raise fail(f"example {n} needs a non-empty 'question' and 'answer'")
        extra = sorted(set(ex) - {"question", "answer", "kind", "followups"})
        if extra:
            raise fail(f"example {n} has an unknown field {extra[0]!r}", "An example takes question, answer, "
                       "kind (one of the task's kinds) and followups (a list of {question, answer}).")
        if "kind" in ex and not any(_kind_key(k.name) == _kind_key(str(ex["kind"])) for k in kinds):
            raise fail(f"example {n} has the kind {ex['kind']!r}, which is not one of the task's kinds")
    _check_template(data["instructions"], fail, kinds=bool(kinds), audiences=bool(audiences),
                    examples=bool(examples), turns=turns,
                    style=bool(bounds["min_words"] or bounds["max_words"] or quote))
    return Task(name=data["name"].strip(), description=" ".join(data["description"].split()), system=system,
                instructions=data["instructions"], origin=origin, text=text, data=data, turns=turns,
                audiences=tuple(a.strip() for a in audiences), kinds=kinds, min_words=bounds["min_words"],
                max_words=bounds["max_words"], quote_commands=quote, examples=tuple(examples))


def _kinds(raw, fail) -> tuple[Kind, ...]:
    if not isinstance(raw, dict):
        raise fail("'kinds' must be a table: [kinds] with one line per kind, e.g. how-to = 30")
    out = []
    for name, spec in raw.items():
        desc, match = BUILTIN_KINDS.get(_kind_key(name)), None
        if isinstance(spec, dict):
            extra = sorted(set(spec) - {"weight", "description", "match"})
            if extra:
                raise fail(f"kind {name!r} has an unknown field {extra[0]!r}",
                           "A kind takes weight, description and match (a regular expression).")
            weight = spec.get("weight")
            desc = spec.get("description", desc)
            match = spec.get("match")
            if match is not None:
                try:
                    re.compile(match)
                except (re.error, TypeError) as exc:
                    raise fail(f"kind {name!r}: 'match' is not a regular expression: {exc}") from None
        else:
            weight = spec
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0 \
                or weight != weight or weight == float("inf"):
            raise fail(f"the weight of kind {name!r} must be a positive number, got {weight!r}")
        if not isinstance(desc, str) or not desc.strip():
            raise fail(f"kind {name!r} needs a one-line description (it is not a built-in kind: "
                       f"{', '.join(BUILTIN_KINDS)})",
                       f'Write it as {name} = {{ weight = {weight}, description = "asks ..." }}.')
        out.append(Kind(name, float(weight), " ".join(desc.split()), match))
    return tuple(out)


@functools.lru_cache(maxsize=64)
def _compiled(source: str):
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, undefined=StrictUndefined,
                                        autoescape=False)
    return env.from_string(source)


def _check_template(source: str, fail, *, kinds: bool, audiences: bool, examples: bool, turns: int,
                    style: bool) -> None:
    from jinja2 import TemplateSyntaxError, meta
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    try:
        used = meta.find_undeclared_variables(ImmutableSandboxedEnvironment().parse(source))
        _compiled(source)
    except TemplateSyntaxError as exc:
        raise fail(f"'instructions' is not a valid template: {exc.message} (line {exc.lineno} of the template)") \
            from None
    unknown = sorted(used - set(FIELDS))
    if unknown:
        raise fail(f"'instructions' uses the unknown field {{{{ {unknown[0]} }}}}",
                   f"Fields: {', '.join(FIELDS)}.")
    if "excerpt" not in used:
        raise fail("'instructions' never shows the excerpt: add {{ excerpt }} (between <{{ tag }}> and </{{ tag }}>)")
    for flag, name, what in ((kinds, "kinds", "[kinds]"), (audiences, "audience", "audiences"),
                             (examples, "examples", "[[examples]]"), (turns > 1, "turns", "turns > 1"),
                             (style, "style", "[answer] bounds or quote_commands")):
        if flag and name not in used:
            raise fail(f"the task sets {what} but 'instructions' never uses {{{{ {name} }}}}",
                       "The model only sees what the instructions show; see `datakeg tasks show mix`.")


__all__ = ["Task", "Kind", "load_task", "parse_task", "builtin_names", "builtin_tasks", "FIELDS", "BUILTIN_KINDS",
           "DEFAULT_TASK"]
