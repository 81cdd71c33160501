"""Every `generate` option, its default and its meaning, defined once.

The click options of `datakeg generate`, the file `datakeg init-config` writes and the README's
options table are derived from (or checked against, by a test) :class:`Settings`. A field's
metadata says whether it shapes the output (``shapes``: recorded in the manifest and in the run
fingerprint, so changing it is a different run) or only how the run goes (timeouts, budgets).
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields

from datakeg.errors import ConfigError

FORMATS = ("completion", "chat", "reasoning")
REASONING_FORMATS = ("separate", "integrated")
STRUCTURED = ("auto", "schema", "json", "none")
HELD_OUT = ("any", "taught")


def opt(default, help: str, *, shapes: bool = True, choices: tuple | None = None, config: bool = True,
        flag: str | None = None, short: str | None = None, metavar: str | None = None):
    """A settings field. ``config``: may appear in the TOML config file / init-config."""
    return field(default=default, metadata={"help": help, "shapes": shapes, "choices": choices, "config": config,
                                            "flag": flag, "short": short, "metavar": metavar})


@dataclass
class Settings:
    """Options of a generate run by their Python names (the CLI flag with ``-`` for ``_``)."""

    task: str = opt("qa", "What the model is asked to write: a built-in task (qa, conversation, mix: see `datakeg "
                    "tasks`) or a TOML task file (instructions, audiences, the mix of question kinds, answer style, "
                    "examples, turns). Its content, not its path, is part of the run's identity.", shapes=False,
                    metavar="FILE|NAME")
    format: str = opt("completion", 'Row shape: completion {"prompt","completion"}; chat {"messages":[...]}; '
                      "reasoning (see --reasoning-format).", choices=FORMATS, short="-f")
    reasoning_format: str = opt("separate", 'For --format reasoning: separate {"question","reasoning","answer"} '
                                'or integrated {"prompt","completion"} with <think>reasoning</think> before the answer.',
                                choices=REASONING_FORMATS)
    system_message: str | None = opt(None, "System turn added to every row with --format chat.")
    chunk_size: int = opt(4000, "Maximum characters per chunk (a code block, table or list item is never cut).")
    pairs_per_1k: float = opt(10.0, "Pairs per 1000 characters of each document (at least 1 per document).")
    train_pct: float = opt(0.6, "Share of pairs for train.")
    valid_pct: float = opt(0.2, "Share of pairs for valid.")
    test_pct: float = opt(0.2, "Share of pairs for test. The three shares must sum to 1.")
    dedupe_threshold: float = opt(90.0, "Drop a question this similar (0-100, rapidfuzz) to any accepted one in "
                                  "the document.")
    grounding_threshold: float = opt(0.5, "Drop an answer unless this share of its content words occurs in the "
                                     "chunk (0 = off).")
    no_grounding: bool = opt(False, "Switch the grounding check off (e.g. when --language translates the "
                             "documentation).")
    max_attempts: int = opt(3, "Extra requests per chunk and split when replies fall short of the target; "
                            "a request that still adds usable pairs does not use one up.")
    batch_size: int = opt(15, "Most pairs asked for in one request.")
    spares: float = opt(0.0, "Also ask for this share of each chunk's target per split (rounded up, only where the "
                        "batch has room: never an extra request) and keep the extra pairs in reserve: a pair the "
                        "duplicate check or the leakage audit removes is replaced from it without asking again. "
                        "Shortens the run where requests wait on one another (many servers or slots, few "
                        "documents), at the cost of more completion tokens (at least one spare per chunk and split, so "
                        "15-30 % more at 0.1 on typical documents); unused spares are discarded. e.g. 0.1 (0 = off).")
    avoid_cap: int = opt(24, "Most questions listed as 'do not repeat' in one prompt.", config=False, flag="")
    language: str | None = opt(None, "Language of the pairs, e.g. German. Default: the language each document "
                               "is written in (detected).")
    temperature: float = opt(0.7, "Sampling temperature.")
    seed: int | None = opt(None, "Sampling seed passed to the model, where supported.")
    leakage_threshold: float = opt(0.9, "After generation, remove valid/test pairs whose question has a TF-IDF "
                                   "(char n-gram) cosine similarity this high to a question of an earlier split "
                                   "(or of the same split in another document), and ask again.")
    no_audit: bool = opt(False, "Skip the leakage audit.")
    semantic_dedupe: bool = opt(False, "Also remove questions whose sentence embeddings are within "
                                "--semantic-threshold of one kept earlier (a rewording TF-IDF misses): across splits, "
                                "across documents and inside a document's split; removed pairs are backfilled. Needs "
                                "the [semantic] extra (a packaged English model, no download).")
    semantic_model: str | None = opt(None, "Folder of a sentence-transformers model for --semantic-dedupe (e.g. a "
                                     "multilingual one). Default: the packaged all-MiniLM-L6-v2, which compares only "
                                     "questions in Latin, Greek or Cyrillic script.", metavar="DIR")
    semantic_threshold: float = opt(0.85, "Cosine similarity of sentence embeddings at which --semantic-dedupe "
                                    "counts two questions as the same.")
    min_per_section: int = opt(0, "Ask for at least this many pairs (extra ones go to train) from every heading "
                               "section with 200 characters or more, whatever --pairs-per-1k gives it (0 = off).")
    paraphrases: int = opt(0, "Add this many rewordings of each train question (same answer, train only, kept "
                           "clear of every valid/test question), so a fine-tuned model learns the facts rather than "
                           "one wording. Needs an instruct model.")
    held_out: str = opt("any", "What valid/test questions may ask about: any fact of their chunk, or (taught) only "
                        "facts the chunk's train answers state, reworded, so that a fine-tune can learn every "
                        "held-out answer; an untaught pair is dropped and asked again. Chunks without train pairs "
                        "keep the usual prompt.", choices=HELD_OUT)
    judge_model: str | None = opt(None, "Model that scores every pair that passed the deterministic gates (1-5 on "
                                  "faithfulness to the chunk, standalone question, usefulness); pairs scored below "
                                  "--judge-threshold are dropped and backfilled. Default: no judge.")
    judge_provider: str | None = opt(None, "Provider of --judge-model. Default: the generation provider.")
    judge_base_url: str | None = opt(None, "Server of --judge-model (OpenAI-compatible base URL or Ollama host). "
                                     "Default: the generation server when the provider is the same.", shapes=False)
    judge_threshold: float = opt(3.0, "Drop a pair whose lowest judge score (1-5) is below this.")
    keep_scores: bool = opt(False, 'Keep the judge\'s scores in an extra "scores" field of every row.')
    # -- how the run goes (not part of the output's identity) ------------------------------
    structured: str = opt("auto", "Structured output: a JSON schema, plain JSON mode, or none. auto uses the "
                          "schema and steps down if the server rejects it.", shapes=False, choices=STRUCTURED)
    request_timeout: float = opt(300.0, "Seconds per request.", shapes=False)
    max_retries: int = opt(4, "Retries per request on timeouts, connection errors, 429 and 5xx (exponential "
                           "backoff with jitter; Retry-After honoured).", shapes=False)
    wait_for_model: float = opt(0.0, "Wait this long for a server that is still starting before giving up.",
                                shapes=False, metavar="SECONDS")
    max_requests: int | None = opt(None, "Hard stop after this many model requests (resumable).", shapes=False)
    max_tokens: int | None = opt(None, "Hard stop after this many prompt + completion tokens (resumable).",
                                 shapes=False)
    max_cost: float | None = opt(None, "Hard stop at this cost in USD, from OpenRouter's reported usage cost "
                                 "(resumable).", shapes=False)
    max_file_mb: float = opt(20.0, "Skip (and report) source files larger than this.", shapes=False)

    # ------------------------------------------------------------------------------------
    @classmethod
    def build(cls, **values) -> Settings:
        """Settings from keyword options; unknown names are a ConfigError naming the valid ones."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(unknown)}",
                              f"Known settings: {', '.join(sorted(names))}.")
        settings = cls(**values)
        settings.validate()
        return settings

    @property
    def ratios(self):
        from datakeg.dataset.splits import Ratios

        return Ratios(self.train_pct, self.valid_pct, self.test_pct)

    @property
    def reasoning(self) -> bool:
        return self.format == "reasoning"

    @property
    def effective_grounding(self) -> float:
        return 0.0 if self.no_grounding else self.grounding_threshold

    @property
    def effective_leakage(self) -> float:
        return 0.0 if self.no_audit else self.leakage_threshold

    def validate(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            _check_type(f.name, str(f.type), value)
            choices = f.metadata.get("choices")
            if choices and value not in choices:
                raise ConfigError(f"unknown --{f.name.replace('_', '-')} {value!r}",
                                  f"Choose one of: {', '.join(choices)}.")
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"--{f.name.replace('_', '-')} must be a finite number, got {value}.")
        _range(self.dedupe_threshold, 0, 100, "--dedupe-threshold", "100 = exact duplicates only")
        _range(self.grounding_threshold, 0, 1, "--grounding-threshold", "0 switches the check off")
        _range(self.leakage_threshold, 0, 1, "--leakage-threshold", "0 switches the audit off")
        _range(self.temperature, 0, 2, "--temperature", "")
        _range(self.judge_threshold, 1, 5, "--judge-threshold", "1 keeps every scored pair")
        _range(self.semantic_threshold, 0.01, 1, "--semantic-threshold", "e.g. 0.85")
        if self.semantic_dedupe and self.no_audit:
            raise ConfigError("--semantic-dedupe is part of the leakage audit, which --no-audit switches off.",
                              "Drop one of them.")
        if self.semantic_model and not self.semantic_dedupe:
            raise ConfigError("--semantic-model needs --semantic-dedupe.", "Add --semantic-dedupe.")
        if not self.judge_model and (self.judge_provider or self.judge_base_url or self.keep_scores):
            raise ConfigError("--judge-provider, --judge-base-url and --keep-scores need --judge-model.",
                              "Name the judge model, e.g. --judge-model qwen2.5:7b.")
        _range(self.pairs_per_1k, 0.001, 1000, "--pairs-per-1k", "e.g. 10")
        _range(self.chunk_size, 200, 1_000_000, "--chunk-size", "characters")
        _range(self.batch_size, 1, 200, "--batch-size", "")
        _range(self.spares, 0, 1, "--spares", "0 switches them off")
        _range(self.max_attempts, 0, 100, "--max-attempts", "")
        _range(self.avoid_cap, 0, 1000, "avoid_cap", "")
        _range(self.paraphrases, 0, 10, "--paraphrases", "0 switches them off")
        _range(self.min_per_section, 0, 100, "--min-per-section", "0 switches it off")
        _range(self.request_timeout, 0.001, 86400, "--request-timeout", "seconds")
        _range(self.max_retries, 0, 100, "--max-retries", "")
        _range(self.wait_for_model, 0, 86400, "--wait-for-model", "seconds")
        _range(self.max_file_mb, 0.001, 100_000, "--max-file-mb", "")
        for name in ("max_requests", "max_tokens", "max_cost"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be greater than 0, got {value}.")
        self.ratios  # raises ConfigError when the shares do not sum to 1

    def shaping(self) -> dict:
        """The settings that shape the output (manifest and run fingerprint)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata["shapes"]}

    def to_dict(self) -> dict:
        return asdict(self)


def _check_type(name: str, annotation: str, value) -> None:
    """Python API values of the wrong type are a ConfigError (click converts the CLI's itself)."""
    flag = f"--{name.replace('_', '-')}"
    if value is None:
        if "None" not in annotation:
            raise ConfigError(f"{flag} needs a value.")
        return
    if annotation.startswith("bool"):
        ok = isinstance(value, bool)
        kind = "true or false"
    elif annotation.startswith("int"):
        ok = isinstance(value, int) and not isinstance(value, bool)
        kind = "a whole number"
    elif annotation.startswith("float"):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        kind = "a number"
    else:
        ok = isinstance(value, str)
        kind = "text"
    if not ok:
        raise ConfigError(f"{flag} must be {kind}, got {value!r}.")


def _range(value, low, high, name: str, note: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ConfigError(f"{name} must be between {low:g} and {high:g}, got {value!r}.",
                          f"Pass a value in that range{f' ({note})' if note else ''}.")


def defaults() -> dict:
    return {f.name: f.default for f in fields(Settings) if f.default is not MISSING}


def option_fields():
    """The fields that are command-line options of `datakeg generate`."""
    return [f for f in fields(Settings) if f.metadata.get("flag") != ""]


def config_example() -> str:
    """The commented TOML written by `datakeg init-config`, derived from the defaults."""
    lines = [
        "# datakeg generate configuration (TOML). Use it with: datakeg generate SRC OUT --config datakeg.toml",
        "# Any `generate` option can go here (dashes or underscores); command-line flags override this file.",
        "# API keys never go here: set OPENROUTER_API_KEY / OPENAI_API_KEY in the environment.",
        "# What the model is asked to write is a task: `datakeg tasks` lists the built-ins and",
        "# `datakeg tasks show mix > mytask.toml` prints one to edit; then set task = \"mytask.toml\".",
        "",
        'provider = "ollama"            # ' + " | ".join(_provider_names()),
        '# model = "qwen2.5:3b"         # default: the provider\'s default model',
        '# base_url = "http://localhost:8000/v1"   # or a list of servers of the same model: ["http://a:8000/v1", "http://b:8000/v1"]',
        "# concurrency = 4              # default: the provider's own",
        "",
    ]
    for f in fields(Settings):
        if not f.metadata["config"]:
            continue
        value = f.default
        comment = f.metadata["help"].split(". ")[0].rstrip(".")
        if f.metadata.get("choices"):
            comment += f" ({' | '.join(f.metadata['choices'])})"
        if value is None:
            lines.append(f"# {f.name} =                   # {comment}")
        else:
            lines.append(f"{f.name} = {_toml(value)}".ljust(31) + f"# {comment}")
    return "\n".join(lines) + "\n"


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def _provider_names() -> list[str]:
    from datakeg.providers import provider_names

    return provider_names()
