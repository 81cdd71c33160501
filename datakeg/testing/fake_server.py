"""A deterministic fake LLM server for tests and benchmarks (real HTTP on 127.0.0.1).

Speaks the OpenAI API (``POST /v1/chat/completions``, ``GET /v1/models``) and the Ollama API
(``POST /api/chat``, ``GET /api/tags``, ``GET /api/version``). It answers datakeg prompts from the
excerpt inside them: each question names a short span of the excerpt and its answer is the text
around that span, so every answer is grounded. It honours the requested count and skips the
questions the prompt says to avoid.

Tasks (``generate --task``): a prompt that lists kinds the way the built-in task ``mix`` does
(``- 2 x "how-to": ...``) gets pairs of exactly those kinds, in that order: each names its kind
in a "kind" field and opens its question with ``[kind] `` (so a test can tell the kind from the
rows on disk). A prompt saying "Each conversation has exactly N user turns" gets conversations
whose "followups" hold N-1 more turns about the next spans of the excerpt ("And what follows from
<the first question's span> about <a later span>?", so no two conversations share a later
question), each answer grounded like the first.

Faults (each ``name`` or ``name:N``; default every request). With N, the fault hits about one
request in N, chosen by the request's content and how often that same request was seen before, so
the same requests fail whatever order concurrent clients send them in, and a retry can succeed:
  fence       wrap the JSON in a ```json code fence
  malformed   reply with broken JSON (nothing parseable)
  duplicates  repeat a question the prompt said to avoid (or the first one of the reply)
  ungrounded  add a pair whose answer has nothing to do with the excerpt
  fewer       return only half of the pairs asked (rounded up)
  prose       add a sentence of prose before and after the JSON
  http429     answer HTTP 429 with Retry-After: 0
  http500     answer HTTP 500
  http401     answer HTTP 401 (key rejected), as OpenRouter does for chat with a bad key
  http403     answer HTTP 403 (key lacks access)
  echoauth    answer HTTP 400 whose error message echoes the request's headers, Authorization
              included (as some proxies and debug servers do)
  html200     answer HTTP 200 with an HTML page (Content-Type: text/html), as a captive proxy does
  notjson200  answer HTTP 200, Content-Type: application/json, with a body that is not JSON
  error200    answer HTTP 200 whose body is only an error object ({"error": {"message": ...}};
              Ollama: {"error": "..."})
  textplain200  send the normal reply (valid JSON) with Content-Type: text/plain, as some proxies
              do: it must be read like any other
  emptychoices  answer HTTP 200 with no choices (Ollama: no message)
  nullcontent answer HTTP 200 whose message content is null
  huge        answer with a reply of HUGE_REPLY_CHARS characters (over any sane size cap)
  leakyparaphrase  to a `--paraphrases` prompt, slip a valid/test question it wrote earlier in as a
              rewording (a held-out question must never reach train)
  reworded    the first pair of a reply rewords the first question the prompt says to avoid (one the
              server wrote earlier, e.g. a train question in a valid prompt): "What is said about X?"
              becomes "What do the docs explain regarding X?" with the same answer. TF-IDF similarity
              stays under 0.9; sentence embeddings put them at 0.95 (a leak only --semantic-dedupe sees)
  junk        half the pairs of a reply are junk: after each good pair comes a copy of it with a
              dangling question ("What does this section say about X?"; Chinese and Japanese
              excerpts get "本节…" / "この節…") or with an echo answer (the question's own words),
              alternately
  strayturns  every pair of a single-turn reply also carries a "followups" list (one more turn) that
              nobody asked for
  repeatturn  in a multi-turn reply, the first conversation's last user turn repeats another
              conversation's question: the first question the prompt says to avoid (one already
              kept for the document), else the first question of the reply's second conversation
  onekind     to a prompt that asks for a mix of kinds, every pair of the reply is of the first kind
              asked (as a model that ignores the mix does)
The faults act on chat requests only (both APIs). ``FakeLLMServer(api_key=...)`` instead makes every
request (models and tags too) without ``Authorization: Bearer <api_key>`` fail with ``auth_status``.

Dialects and server limits (constructor arguments; command-line flags of the same names):
  dialect="llama-cpp-python"  refuses response_format {"type": "json_schema"} with HTTP 500 and the
              body llama-cpp-python 0.3.36 sends ("Input should be 'text' or 'json_object'"); accepts
              {"type": "json_object", "schema": ...}; its /v1/models lists one model, owned_by "me",
              and any model name is served (the reply echoes it)
  dialect="no-response-format"  refuses any response_format (Ollama: format) with HTTP 400 naming it
              (a server with no structured output: the prompt and tolerant parsing must do)
  n_ctx=N     a context window of N tokens (a token is 4 characters of the prompt here), as
              llama-cpp-python: a prompt of N tokens or more gets HTTP 400 context_length_exceeded
              with the numbers; otherwise max_tokens is cut to what is left, and a reply longer than
              that is cut off with finish_reason "length"
  dialect="vllm" with n_ctx=N  as vLLM: prompt + max_tokens over N tokens is refused (HTTP 400 "This
              model's maximum context length is N tokens. However, you requested ... (P in the
              messages, C in the completion)") instead of cutting max_tokens
  die_after=N the server goes away after N chat requests: that request and every later one find
              nothing (open connections are dropped, new ones refused), as a killed server
  models_delay=S, models_delay_times=K  the first K GET /v1/models wait S seconds before answering
              (a busy llama.cpp server answers /models only between completions)

A `generate --held-out taught` prompt (a valid/test prompt listing the chunk's train answers) is
answered only about those answers: for each listed answer whose span no avoided question names yet,
the question rewords the train question ("Which details are given about SPAN?" for
valid, "How do the docs describe SPAN?" for test) and the answer is a part of the listed answer.

Closed-book questions (no excerpt in the prompt, as `datakeg eval` sends them) are answered from
the server's ``answers`` table ("I do not know." otherwise). RAG and open-book questions (`datakeg
eval --rag/--open-book`: passages between ``<context-XXXXXX>`` tags, then "Question: ...") are
answered from the passages: a question of this server's own form ("What is said about SPAN?") gets
the words around SPAN in the first passage holding it, exactly the answer it wrote for that chunk,
and "I do not know." when no passage holds it; a judge prompt gets score 5 when the
candidate equals the reference after normalisation, 2 when they share a word, else 0.

Judge prompts of `generate --judge-model` (a ``<chunk-XXXXXX>`` and one JSON pair a line) get, per
pair, "faithful" 5 when at least 80 % of the answer's words occur in the chunk (else 1),
"standalone" 1 when the question is dangling (datakeg.curation.quality.dangling, else 5) and "useful" 1 when
the answer is an echo of the question (else 4). ``malformed`` breaks the judge's reply too.

``POST /fake/reset`` (body ``{"latency": seconds}``, optional) makes it forget every request, as if
it had just started, and sets its latency: benchmarks reuse one server whose reply cache is warm.

Run it on its own:  python -m datakeg.testing.fake_server --port 8000 --fault fence --latency 0.2
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULTS = ("strayturns", "repeatturn", "onekind", "leakyparaphrase", "fence", "malformed", "duplicates", "ungrounded", "fewer", "prose", "http429", "http500",
          "http401", "http403", "echoauth", "html200", "notjson200", "error200", "emptychoices", "nullcontent",
          "huge", "junk", "reworded", "textplain200")
HTTP_FAULTS = frozenset({"http401", "http403", "http429", "http500", "echoauth", "html200", "notjson200", "error200"})
HUGE_REPLY_CHARS = 1_200_000  # characters of the ``huge`` reply (datakeg refuses replies over 1 MB)
HTML_PAGE = ("<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n<body><h1>Bad Gateway</h1>"
             "<p>The proxy received an invalid response from an upstream server.</p></body></html>\n")
DEFAULT_MODELS = ("qwen2.5:3b", "fake-model", "judge-fraction", "judge-scoreword", "judge-string", "judge-prose",
                  "judge-think", "judge-broken")  # the judge-* names pick a judge reply's shape (closed_book)
DIALECTS = (None, "llama-cpp-python", "no-response-format", "vllm")
# llama-cpp-python 0.3.36's reply to response_format json_schema (measured; the traceback line shortened)
LLAMA_CPP_SCHEMA_500 = ("1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), "
                        "'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema', 'ctx': "
                        "{'expected': \"'text' or 'json_object'\"}}\n\n  File \"llama_cpp/server/app.py\", line 376, "
                        "in create_chat_completion\n    POST /v1/chat/completions")

# the chunk sits between <excerpt-XXXXXX> and the same closing tag (datakeg.generation.prompts.excerpt_tag);
# the back-reference keeps a "</excerpt>" written in the document from ending it early
_EXCERPT = re.compile(r"<(excerpt(?:-[0-9a-f]+)?)>\n(.*?)\n</\1>", re.DOTALL)
_COUNT = re.compile(r"Write exactly (\d+) new (?:question-answer pair|conversation)")
# a task's mix (the built-in task "mix" writes it so): '- 2 x "how-to": description'
_KIND_LINE = re.compile(r'^- (\d+) x "([^"\n]+)":', re.MULTILINE)
_TURNS = re.compile(r"Each conversation has exactly (\d+) user turns")
_JUDGE_CHUNK = re.compile(r"<(chunk-[0-9a-f]+)>\n(.*?)\n</\1>", re.DOTALL)
_JUDGE_MARK = "Rate each question-answer pair below"
_HIRAGANA = re.compile("[\u3040-\u309f]")
_HAN = re.compile("[\u4e00-\u9fff]")
_WORDS = re.compile(r"[^\W_][\w.'/-]*", re.UNICODE)


def parse_faults(specs) -> dict[str, int]:
    faults = {}
    for spec in specs or ():
        name, _, every = spec.partition(":")
        if name not in FAULTS:
            raise ValueError(f"unknown fault {name!r}; known: {', '.join(FAULTS)}")
        faults[name] = int(every or 1)
    return faults


@functools.lru_cache(maxsize=4096)
def candidates(excerpt: str) -> list[tuple[str, str]]:
    """All (question, answer) pairs the server can give for an excerpt, in a fixed order.

    Each names a different 6-word span of the excerpt; spans too similar to an earlier one are
    left out, as a cooperative model would, and so are pairs the prompt's rules forbid (a
    question that leans on "this section" or "this option", an answer that only repeats it)."""
    from rapidfuzz import fuzz

    from datakeg.curation.quality import dangling, echo

    words = _WORDS.findall(excerpt)
    out: list[tuple[str, str]] = []
    seen: list[str] = []
    for start in range(0, len(words), 6):
        span = " ".join(words[start:start + 6])
        if len(words[start:start + 6]) < 3 or any(fuzz.token_sort_ratio(span, s) >= 70 for s in seen):
            continue
        seen.append(span)
        answer = " ".join(words[max(0, start - 3):start + 12])
        question = f"What is said about {span}?"
        if dangling(question) or echo(question, answer):
            continue
        out.append((question, answer))
    return out


REWORDED = "What do the docs explain regarding {span}?"  # the ``reworded`` fault's wording
_ABOUT = "What is said about "  # how each of the server's own questions opens


def avoided(prompt: str) -> list[str]:
    markers = ("Do not write questions similar to these existing ones:\n",
               "Do not start a conversation with a question similar to these existing ones:\n")
    marker = next((m for m in markers if m in prompt), None)
    if marker is None:
        return []
    block = prompt.split(marker, 1)[1].split("\n\n", 1)[0]
    return [line[2:] for line in block.splitlines() if line.startswith("- ")]


from datakeg.generation.prompts import TAUGHT_MARKER  # noqa: E402  (the prompt's own wording)

# `--held-out taught` rewordings of a train question's fact, one per held-out split
TAUGHT_QUESTIONS = {"valid": "Which details are given about {span}?",
                    "test": "How do the docs describe {span}?"}


def taught_pairs(prompt: str, want: int) -> list[dict]:
    """A `--held-out taught` prompt: questions about the facts of the listed train answers only,
    reworded (another template than the train questions'), each answer a part of a listed one."""
    block = prompt.split(TAUGHT_MARKER + "\n", 1)[1]
    answers = []
    for line in block.splitlines():
        if not line.startswith("- "):
            break
        answers.append(line[2:])
    split = "test" if "(for the test set)" in prompt else "valid"
    prefixes = tuple(t.split("{")[0] for t in TAUGHT_QUESTIONS.values())
    used = " ".join(q for q in avoided(prompt) if q.startswith(prefixes))  # held-out questions asked before
    pairs = []
    for answer in (answers if split == "valid" else answers[::-1]):  # test starts from the other end
        if len(pairs) >= want:
            break
        words = _WORDS.findall(answer)
        k = 3 if len(words) >= 12 else 0  # where the train question's span starts in its answer
        span = " ".join(words[k:k + 6])
        if len(words[k:k + 6]) < 3 or span in used:  # asked in valid (or an earlier request) already
            continue
        used += " " + span
        pairs.append({"question": TAUGHT_QUESTIONS[split].format(span=span),
                      "answer": " ".join(words[max(0, k - 1):k + 11])})
    return pairs


def answer_prompt(prompt: str, reasoning: bool, active: set[str]) -> str:
    """The reply text for one datakeg prompt, with the active faults applied."""
    m = _EXCERPT.search(prompt)
    excerpt = m.group(2) if m else prompt
    count = int(_COUNT.search(prompt).group(1)) if _COUNT.search(prompt) else 3
    avoid = avoided(prompt)
    # a question it wrote for a task's kind opens with "[kind] " (see below): the same span either way
    avoid_set = {re.sub(r"^\[[^\]\n]+\] ", "", q) for q in avoid}
    want = (count + 1) // 2 if "fewer" in active else count
    if TAUGHT_MARKER in prompt:
        pairs = taught_pairs(prompt, want)
        if reasoning:
            pairs = [{"question": p["question"], "reasoning": f"The documentation states: {p['answer']}",
                      "answer": p["answer"]} for p in pairs]
        return json.dumps({"pairs": pairs}, ensure_ascii=False)
    # Move on from where the avoided questions stop, as a model continuing its work would.
    cands = candidates(excerpt)
    seen_at = [i for i, (q, _) in enumerate(cands) if q in avoid_set]
    first = (max(seen_at) + 1) if seen_at else 0
    pairs = []
    # a task's mix: the k-th pair is of the k-th kind asked, and says so in its "kind" field
    kinds = [name for n, name in _KIND_LINE.findall(prompt) for _ in range(int(n))]
    if "onekind" in active:
        kinds = kinds[:1]
    turns = int(_TURNS.search(prompt).group(1)) if _TURNS.search(prompt) else 1
    order = [c for c in cands[first:] + cands[:first] if c[0] not in avoid_set]
    for k, (q, a) in enumerate(order):
        if len(pairs) >= want:
            break
        pair = {"question": q, "answer": a}
        if reasoning:
            pair = {"question": q, "reasoning": f"The documentation states: {a}", "answer": a}
        if kinds:  # the question says its kind too, so a test can check the rows on disk
            pair["kind"] = kinds[len(pairs) % len(kinds)]
            pair["question"] = f"[{pair['kind']}] {q}"
        if turns == 1 and "strayturns" in active:
            pair["followups"] = [{"question": "And what happens next?", "answer": a}]
        if turns > 1:  # follow-ups about the next spans of the excerpt, referring back to the first
            # (each names its own conversation's span too: two conversations never ask the same later
            # question, as a model told that every question of the document must differ would not)
            later = order[k + 1:] + order[:k]
            first = q[len(_ABOUT):-1]
            pair["followups"] = [{"question": f"And what follows from {first} about {fq[len(_ABOUT):-1]}?",
                                  "answer": fa} for fq, fa in (later[j % len(later)] if later else (q, a)
                                                               for j in range(turns - 1))]
        pairs.append(pair)
    if "reworded" in active:
        prefix = "What is said about "
        earlier = next((q for q in avoid if q.startswith(prefix) and q.endswith("?")), None)
        if earlier is not None:
            answer = dict(cands).get(earlier, pairs[0]["answer"] if pairs else earlier)
            pair = {"question": REWORDED.format(span=earlier[len(prefix):-1]), "answer": answer}
            if reasoning:
                pair["reasoning"] = f"The documentation states: {answer}"
            pairs = [pair] + pairs[:max(0, want - 1)]
    if "junk" in active:
        # half the reply is junk made from the other half's spans (so no candidate is used up)
        good, pairs = pairs[:(len(pairs) + 1) // 2], []
        for k, pair in enumerate(good):
            pairs.append(pair)
            if len(pairs) >= want:
                break
            span = pair["question"][len("What is said about "):-1]
            if k % 2 == 0:  # a question that leans on the excerpt
                if _HIRAGANA.search(excerpt):
                    q = f"この節では{span}について何と書かれていますか？"
                elif _HAN.search(excerpt):
                    q = f"本节关于{span}说了什么？"
                else:
                    q = f"What does this section say about {span}?"
                pairs.append(dict(pair, question=q))
            else:  # an answer that only repeats the question
                pairs.append(dict(pair, answer=span))
    if "repeatturn" in active and pairs and pairs[0].get("followups"):
        # the first conversation's last turn repeats another conversation's question: the first the
        # prompt says to avoid (one the document holds already) or else the reply's second one
        repeat = avoid[0] if avoid else pairs[1]["question"] if len(pairs) > 1 else None
        if repeat is not None:
            last = pairs[0]["followups"][-1]
            pairs[0]["followups"][-1] = {"question": repeat, "answer": last["answer"]}
    if "duplicates" in active and pairs:
        pairs.append(dict(pairs[0], question=avoid[0] if avoid else pairs[0]["question"]))
    if "ungrounded" in active:
        pairs.append({"question": "Which colour is the moon of planet Zorblax in winter?",
                      "answer": "Zorblaxian moons glow turquoise whenever quasar volcanoes erupt.",
                      **({"reasoning": "Invented."} if reasoning else {})})
    body = json.dumps({"pairs": pairs}, ensure_ascii=False)
    if "malformed" in active:
        return '{"pairs": [{"question": "Unterminated, "answer": ' + body[:20]
    if "fence" in active:
        body = f"```json\n{body}\n```"
    if "prose" in active:
        body = f"Sure! Here are the pairs:\n{body}\nLet me know if you need more."
    return body


from datakeg.generation.paraphrase import MARKER as PARAPHRASE_MARKER  # noqa: E402  (the prompt's own wording)

_REWRITES = ("Could you tell me: {q}", "I would like to know this. {q}", "Quick question about the docs: {q}",
             "Please explain. {q}", "One more thing. {q}")


def answer_paraphrases(prompt: str, planted: list[str] = ()) -> str:
    """Rewordings for a `--paraphrases` prompt: each question gets K fixed rewrites (``planted``:
    questions slipped in as extra rewrites of the first one, e.g. a held-out question)."""
    k = int(re.search(r"in (\d+) different way", prompt).group(1))
    block = prompt.split(PARAPHRASE_MARKER, 1)[1]
    items = []
    for line in block.splitlines():
        m = re.match(r"^(\d+)\. (.+)$", line)
        if m:
            q = m.group(2)
            items.append({"index": int(m.group(1)), "questions": [r.format(q=q) for r in _REWRITES[:k]]})
    if items and planted:
        items[0]["questions"] = list(planted) + items[0]["questions"]
    return json.dumps({"paraphrases": items})


def judge_reply(prompt: str, active: set[str]) -> str:
    """Scores for a `generate --judge-model` prompt (see the module docstring)."""
    from datakeg.curation.quality import dangling, echo

    if "malformed" in active:
        return '{"scores": [{"index": 1, "faithful": '
    chunk = _JUDGE_CHUNK.search(prompt).group(2)
    words = {w.lower() for w in _WORDS.findall(chunk)}
    block = prompt.split("Pairs (one JSON object per line):\n", 1)[1].split("\n\n", 1)[0]
    scores = []
    for line in block.splitlines():
        item = json.loads(line)
        q, a = item["question"], item["answer"]
        aw = [w.lower() for w in _WORDS.findall(a)]
        faithful = 5 if aw and sum(w in words for w in aw) >= 0.8 * len(aw) else 1
        standalone = 1 if dangling(q) else 5
        useful = 1 if echo(q, a) else 4
        scores.append({"index": item["index"], "faithful": faithful, "standalone": standalone, "useful": useful,
                       "reason": "fake judge: " + ("answer not in the chunk" if faithful == 1 else
                                                   "dangling question" if standalone == 1 else
                                                   "echo answer" if useful == 1 else "fine")})
    body = json.dumps({"scores": scores}, ensure_ascii=False)
    return f"```json\n{body}\n```" if "fence" in active else body


_CONTEXT = re.compile(r"<(context-[0-9a-f]+)>\n(.*?)\n</\1>", re.DOTALL)
_OWN_QUESTION = re.compile(r"^What is said about (.+)\?$")


def context_answer(prompt: str) -> str:
    """The answer to a RAG / open-book prompt, read from its passages (see the module docstring)."""
    question = prompt.rsplit("Question: ", 1)[-1].strip()
    m = _OWN_QUESTION.match(question)
    if not m:
        return "I do not know."
    span = _WORDS.findall(m.group(1))
    for block in _CONTEXT.finditer(prompt):
        words = _WORDS.findall(block.group(2))
        for start in range(len(words) - len(span) + 1):
            if words[start:start + len(span)] == span:
                return " ".join(words[max(0, start - 3):start + 12])
    return "I do not know."


def closed_book(messages: list[dict], model: str, answers: dict[str, str]) -> str:
    prompt = str(messages[-1].get("content", "")) if messages else ""
    if _CONTEXT.search(prompt) and "\nQuestion: " in prompt:
        return context_answer(prompt)
    if "Candidate answer:" in prompt and "Reference answer:" in prompt:
        from datakeg.evaluation.evaluate import normalize_answer

        ref = prompt.split("Reference answer: ", 1)[1].split("\nCandidate answer: ", 1)[0]
        cand = prompt.split("Candidate answer: ", 1)[1].split("\n\n", 1)[0]
        a, b = normalize_answer(ref), normalize_answer(cand)
        score = 5 if a == b else 2 if set(a.split()) & set(b.split()) else 0
        # the judge model's name picks the reply's shape, to test tolerant parsing of real judges
        styles = {"judge-fraction": f"{score}/5",
                  "judge-scoreword": f"Score: {score}\nThe candidate is graded against the reference.",
                  "judge-string": json.dumps({"score": str(score), "reason": "string score"}),
                  "judge-prose": f'Here is my grade.\n{{"score": {score}, "reason": "prose around"}}\nThanks.',
                  "judge-think": f'<think>Compare the facts.</think>{{"score": {score}, "reason": "thought"}}',
                  "judge-broken": "I am unable to grade this answer."}
        if model in styles:
            return styles[model]
        return json.dumps({"score": score, "reason": f"fake judge: {score}/5"})
    return answers.get(f"{model}\x00{prompt}", answers.get(prompt, "I do not know."))


class _Server(ThreadingHTTPServer):
    # socketserver's default listen backlog is 5: 32 clients connecting at once overflow it, the
    # kernel drops their SYNs and they retry after a 1 s timeout, a stall no real model server
    # (uvicorn, Ollama: backlogs of 2048 and more) has.
    request_queue_size = 1024


class FakeLLMServer:
    """In-process server: ``with FakeLLMServer(faults=["fence"]) as srv: srv.url ...``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, faults=None, latency: float = 0.0,
                 models=DEFAULT_MODELS, answers: dict[str, str] | None = None, api_key: str | None = None,
                 auth_status: int = 401, jitter: float = 0.0, dialect: str | None = None, n_ctx: int | None = None,
                 die_after: int | None = None, models_delay: float = 0.0, models_delay_times: int = 1):
        if dialect not in DIALECTS:
            raise ValueError(f"unknown dialect {dialect!r}; known: {', '.join(d for d in DIALECTS if d)}")
        self.dialect = dialect
        self.n_ctx = n_ctx
        self.die_after = die_after
        self.dead = False
        self.models_delay = models_delay
        self.models_delay_times = models_delay_times
        self.models_calls = 0
        self.faults = parse_faults(faults)
        self.api_key = api_key  # when set, every request must carry "Authorization: Bearer <api_key>"
        self.auth_status = auth_status
        self.answers = dict(answers or {})  # closed-book question -> answer, per model: {"model\x00q": a}
        self.latency = latency
        self.jitter = jitter  # extra random delay per reply, up to this many seconds
        self.models = list(models)
        self.requests: list[dict] = []  # every chat request received, in order: path, body, faults hit,
        #                                 "at" (time.monotonic() on arrival: a per-request timeline)
        self.lock = threading.Lock()
        self.chat_count = 0
        self.seen: dict[int, int] = {}
        self.prefixes: set[bytes] = set()  # prompt prefixes seen (for the prefix-cache figures)
        self.heldout: list[str] = []  # questions it wrote for valid/test (for the leakyparaphrase fault)
        self.httpd = _Server((host, port), self._handler())
        self.httpd.daemon_threads = True
        self.thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        """Base URL for the OpenAI provider (``--base-url``)."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def ollama_host(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeLLMServer:
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.dead = True
        self.httpd.shutdown()
        self.httpd.server_close()

    def _die(self) -> None:
        """Go away mid-run (``die_after``): stop listening; open connections are dropped by their handlers."""
        self.dead = True
        threading.Thread(target=self.stop, daemon=True).start()

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def reset(self, latency: float | None = None) -> None:
        """Forget every request (the request log, the prefix cache, the faults' counts), as a freshly
        started server; the replies' own cache (:func:`candidates`) stays warm. ``POST /fake/reset``
        (optional body ``{"latency": seconds}``) does this over HTTP."""
        with self.lock:
            self.requests.clear()
            self.chat_count = 0
            self.seen.clear()
            self.prefixes.clear()
            self.heldout.clear()
            if latency is not None:
                self.latency = float(latency)

    def _prefix_cache(self, prompt: str) -> int:
        """Tokens of ``prompt`` a prefix cache (vLLM's automatic prefix caching, hosted prompt
        caches) would serve: the longest prefix, in blocks of 16 tokens (64 characters here), that
        an earlier request already had."""
        import hashlib

        block = 64
        running, hashes = hashlib.sha1(), []
        for end in range(block, len(prompt) + 1, block):  # the hash of each prefix, in one pass
            running.update(prompt[end - block:end].encode("utf-8", "surrogatepass"))
            hashes.append(running.copy().digest())
        with self.lock:
            hit = 0
            for h in hashes:
                if h not in self.prefixes:
                    break
                hit += 1
            self.prefixes.update(hashes)
        return hit * block // 4

    def _active_faults(self, body: dict) -> tuple[int, set[str]]:
        import hashlib

        digest = int(hashlib.sha256(json.dumps(body.get("messages"), sort_keys=True).encode()).hexdigest()[:8], 16)
        with self.lock:
            self.chat_count += 1
            n = self.chat_count
            seen = self.seen.get(digest, 0)
            self.seen[digest] = seen + 1
        return n, {name for name, every in self.faults.items() if (digest + seen) % every == 0}

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out as separate writes

            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, status: int, obj, headers=None):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _send_raw(self, status: int, data: bytes, content_type: str):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _auth_refused(self) -> bool:
                """Answer ``auth_status`` (and return True) when an api_key is required and not sent."""
                if server.api_key is None or self.headers.get("Authorization") == f"Bearer {server.api_key}":
                    return False
                if self.command == "POST":  # the body must be read even when refused (keep-alive)
                    self.rfile.read(int(self.headers.get("Content-Length") or 0))
                message = "Incorrect API key provided" if server.auth_status == 401 else "Forbidden"
                self._send(server.auth_status, {"error": {"message": message, "type": "invalid_request_error",
                                                          "code": "invalid_api_key"}}
                           if self.path.startswith("/v1") else {"error": message.lower()})
                return True

            def _fault_reply(self, active: set[str], ollama: bool) -> bool:
                """Send the reply of an HTTP-level fault, if one is active; True when sent."""
                def error(message, **extra):
                    return {"error": message} if ollama else {"error": {"message": message, **extra}}

                if "http401" in active:
                    self._send(401, error("Incorrect API key provided: sk-abc...xyz", code="invalid_api_key"))
                elif "http403" in active:
                    self._send(403, error("This key is not allowed to use this model", code="forbidden"))
                elif "http429" in active:
                    self._send(429, error("rate limited"), {"Retry-After": "0"})
                elif "http500" in active:
                    self._send(500, error("internal error"))
                elif "echoauth" in active:
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    self._send(400, error(f"invalid request; Authorization: {self.headers.get('Authorization')}"
                                          f" (request headers: {json.dumps(headers)})"))
                elif "html200" in active:
                    self._send_raw(200, HTML_PAGE.encode(), "text/html; charset=utf-8")
                elif "notjson200" in active:
                    self._send_raw(200, b'{"id": "chatcmpl-1", "choices": [{"message": {"content": "{\\"pa',
                                   "application/json")
                elif "error200" in active:
                    self._send(200, error("upstream model failed: out of memory", code=502))
                else:
                    return False
                return True

            def _drop(self) -> None:
                """A dead server: the connection ends with no reply."""
                self.close_connection = True
                try:
                    self.connection.shutdown(2)
                except OSError:
                    pass

            def do_GET(self):
                if server.dead:
                    return self._drop()
                if self._auth_refused():
                    return
                if self.path.rstrip("/") == "/v1/models":
                    with server.lock:
                        server.models_calls += 1
                        delay = server.models_delay if server.models_calls <= server.models_delay_times else 0.0
                    if delay:
                        time.sleep(delay)
                    if server.dialect == "llama-cpp-python":  # one model, named by its file
                        return self._send(200, {"object": "list", "data": [
                            {"id": "/models/" + server.models[0] + ".gguf", "object": "model", "owned_by": "me",
                             "permissions": []}]})
                    self._send(200, {"object": "list", "data": [
                        {"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in server.models]})
                elif self.path == "/api/tags":
                    self._send(200, {"models": [
                        {"name": m, "model": m, "modified_at": "2026-01-01T00:00:00Z", "size": 1,
                         "digest": "0" * 64, "details": {"format": "gguf", "family": "fake"}}
                        for m in server.models]})
                elif self.path == "/api/version":
                    self._send(200, {"version": "0.0.0-fake"})
                else:
                    self._send(404, {"error": f"not found: {self.path}"})

            def do_POST(self):
                if server.dead:
                    return self._drop()
                if self._auth_refused():
                    return
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except json.JSONDecodeError:
                    return self._send(400, {"error": "invalid JSON body"})
                if self.path == "/fake/reset":  # benchmarks: one warm server for many runs
                    latency = body.get("latency") if isinstance(body, dict) else None
                    if not isinstance(body, dict) or not isinstance(latency, (int, float, type(None))):
                        return self._send(400, {"error": 'the body is {"latency": seconds} or {}'})
                    server.reset(latency)
                    return self._send(200, {"ok": True})
                if self.path not in ("/v1/chat/completions", "/api/chat"):
                    return self._send(404, {"error": f"not found: {self.path}"})
                ollama = self.path == "/api/chat"
                arrived = time.monotonic()
                if server.die_after is not None and server.chat_count >= server.die_after:
                    server._die()
                    return self._drop()
                refusal = self._refuse_format(body, ollama)
                if refusal:
                    with server.lock:
                        server.requests.append({"path": self.path, "body": body, "faults": ["refused_format"],
                                                "at": arrived, "status": refusal[0]})
                    return self._send(*refusal)
                n, active = server._active_faults(body)
                with server.lock:
                    server.requests.append({"path": self.path, "body": body, "faults": sorted(active), "at": arrived})
                # The reply is written first and sent ``latency`` seconds after the request arrived
                # (jitter: replies come back in a different order from one run to the next), as a model
                # server's latency includes its own work: this server's CPU time (it shares the
                # machine with the client in benchmarks) does not queue up behind the wait.
                delay = server.latency + (random.uniform(0, server.jitter) if server.jitter else 0)
                reply = None if active & HTTP_FAULTS else self._chat_reply(body, ollama, n, active)
                if delay:
                    time.sleep(max(0.0, arrived + delay - time.monotonic()))
                if self._fault_reply(active, ollama):
                    return
                if "textplain200" in active:  # a good reply under the wrong Content-Type
                    return self._send_raw(reply[0], json.dumps(reply[1]).encode(), "text/plain; charset=utf-8")
                self._send(*reply)

            def _refuse_format(self, body: dict, ollama: bool) -> tuple[int, dict] | None:
                """The dialect's refusal of the request's response_format (Ollama: format), if it refuses it."""
                if ollama:
                    if server.dialect == "no-response-format" and body.get("format"):
                        return 400, {"error": "this server does not support the format parameter"}
                    return None
                fmt = body.get("response_format")
                if not isinstance(fmt, dict):
                    return None
                if server.dialect == "llama-cpp-python" and fmt.get("type") not in ("text", "json_object"):
                    return 500, {"error": {"message": LLAMA_CPP_SCHEMA_500, "type": "internal_server_error",
                                           "param": None, "code": None}}
                if server.dialect == "no-response-format":
                    return 400, {"error": {"message": "Unrecognized request argument supplied: response_format",
                                           "type": "invalid_request_error", "param": "response_format",
                                           "code": None}}
                return None

            def _chat_reply(self, body: dict, ollama: bool, n: int, active: set[str]) -> tuple[int, dict]:
                """(status, body) of the reply to a chat request with no HTTP-level fault active."""
                model = body.get("model")
                if ollama and model not in server.models:
                    return 404, {"error": f"model '{model}' not found, try pulling it first"}
                messages = body.get("messages") or []
                prompt = "\n".join(str(m.get("content", "")) for m in messages)
                fmt = body.get("format") if ollama else body.get("response_format")
                reasoning = '"reasoning"' in json.dumps(fmt) if fmt else '"reasoning"' in prompt
                if PARAPHRASE_MARKER in prompt:
                    with server.lock:
                        planted = list(server.heldout[:1]) if "leakyparaphrase" in active else []
                    text = answer_paraphrases(prompt, planted)
                elif _JUDGE_MARK in prompt and _JUDGE_CHUNK.search(prompt):
                    text = judge_reply(prompt, active)
                elif _EXCERPT.search(prompt):
                    text = answer_prompt(prompt, reasoning, active)
                    if "(for the valid set)" in prompt or "(for the test set)" in prompt:
                        try:
                            held = [p["question"] for p in json.loads(text).get("pairs", [])]
                        except (ValueError, AttributeError, TypeError, KeyError):
                            held = []
                        with server.lock:
                            server.heldout.extend(held)
                else:
                    text = closed_book(messages, model, server.answers)
                if "huge" in active:
                    text += " " * (HUGE_REPLY_CHARS - len(text))
                ptok, ctok = max(1, len(prompt) // 4), max(1, len(text) // 4)
                finish = "stop"
                if server.n_ctx is not None and not ollama:  # llama-cpp-python's context rules
                    wanted = body.get("max_tokens")
                    if ptok >= server.n_ctx or (server.dialect == "vllm" and ptok + (wanted or 0) > server.n_ctx):
                        asked = ptok + (wanted or 0)
                        return 400, {"error": {
                            "message": f"This model's maximum context length is {server.n_ctx} tokens. However, you "
                                       f"requested {asked} tokens ({ptok} in the messages, {wanted or 0} in the "
                                       "completion). Please reduce the length of the messages or completion.",
                            "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}
                    room = server.n_ctx - ptok
                    cap = min(room, wanted) if wanted else room
                    if ctok > cap:  # cut off, as a model that runs out of tokens
                        text, ctok, finish = text[:cap * 4], cap, "length"
                cached = server._prefix_cache(prompt)
                message = {"role": "assistant", "content": None if "nullcontent" in active else text}
                if ollama:
                    reply = {"model": model, "created_at": "2026-01-01T00:00:00Z", "message": message,
                             "done": True, "done_reason": "stop", "prompt_eval_count": ptok, "eval_count": ctok}
                    if "emptychoices" in active:
                        del reply["message"]
                    return 200, reply
                choices = [] if "emptychoices" in active else [
                    {"index": 0, "finish_reason": finish, "message": message}]
                return 200, {
                    "id": f"chatcmpl-{n}", "object": "chat.completion", "created": 0, "model": model,
                    "choices": choices,
                    "usage": {"prompt_tokens": ptok, "completion_tokens": ctok, "total_tokens": ptok + ctok,
                              "prompt_tokens_details": {"cached_tokens": cached}}}

        return Handler


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--fault", action="append", default=[], help="fault to inject, e.g. fence or malformed:3")
    ap.add_argument("--latency", type=float, default=0.0, help="seconds to wait before each chat reply")
    ap.add_argument("--jitter", type=float, default=0.0, help="extra random delay per reply, up to this many seconds")
    ap.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on every request")
    ap.add_argument("--auth-status", type=int, default=401, help="status of a request without the key (401/403)")
    ap.add_argument("--dialect", choices=[d for d in DIALECTS if d], default=None,
                    help="answer as this server does (structured-output refusals, model list)")
    ap.add_argument("--n-ctx", type=int, default=None, help="context window in tokens (4 characters each)")
    ap.add_argument("--die-after", type=int, default=None, help="go away after this many chat requests")
    args = ap.parse_args(argv)
    srv = FakeLLMServer(args.host, args.port, args.fault, args.latency, api_key=args.api_key,
                        auth_status=args.auth_status, jitter=args.jitter, dialect=args.dialect, n_ctx=args.n_ctx,
                        die_after=args.die_after)
    print(f"fake LLM server on http://{args.host}:{srv.port}  (OpenAI: --base-url {srv.url}; "
          f"Ollama: OLLAMA_HOST={srv.ollama_host})", flush=True)
    try:
        srv.httpd.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
