"""The Ollama TEMPLATE of every chat family renders, in Go's text/template, exactly the text that
training renders with the model's own chat template (jinja2, as transformers runs it), system
messages included, less the BOS token (Ollama's tokenizer adds it). Needs `go` (skipped without:
apt-get install golang-go)."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

jinja2 = pytest.importorskip("jinja2")

from datakeg.training.ollama_export import TEMPLATES, family_of_template
from datakeg.support.chat_template import render

FIXTURES = json.loads((Path(__file__).parents[1] / "fixtures" / "official_chat_templates.json").read_text())
# Two families the fixture file lacks, reduced to the branch without tools (the only one datakeg uses):
FIXTURES["qwen2.5"] = {  # Qwen/Qwen2.5-*-Instruct tokenizer_config.json, no-tools branch
    "bos_token": None, "eos_token": "<|im_end|>",
    "template": "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + "
                "'<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You "
                "are a helpful assistant.<|im_end|>\\n' }}{%- endif %}{%- for message in messages %}{%- if "
                "(message.role == 'user') or (message.role == 'system' and not loop.first) or (message.role == "
                "'assistant') %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
                "{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"}
FIXTURES["llama3.1"] = {  # meta-llama/Llama-3.1-8B-Instruct tokenizer_config.json, no-tools branch
    "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
    "template": "{{- bos_token }}{%- if not date_string is defined %}{%- set date_string = \"26 Jul 2024\" %}"
                "{%- endif %}{%- if messages[0]['role'] == 'system' %}{%- set system_message = "
                "messages[0]['content']|trim %}{%- set messages = messages[1:] %}{%- else %}{%- set system_message = "
                "\"\" %}{%- endif %}{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}{{- \"Cutting Knowledge "
                "Date: December 2023\\n\" }}{{- \"Today Date: \" + date_string + \"\\n\\n\" }}{{- system_message }}"
                "{{- \"<|eot_id|>\" }}{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + "
                "'<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}{%- endfor %}{%- if "
                "add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"}

GO_RENDER = r'''package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type Msg struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type Case struct {
	Template string `json:"template"`
	Messages []Msg  `json:"messages"`
}

func main() {
	var cases []Case
	if err := json.NewDecoder(os.Stdin).Decode(&cases); err != nil {
		panic(err)
	}
	out := []string{}
	for _, c := range cases {
		t := template.Must(template.New("t").Parse(c.Template))
		var b strings.Builder
		if err := t.Execute(&b, map[string]any{"Messages": c.Messages}); err != nil {
			panic(err)
		}
		out = append(out, b.String())
	}
	json.NewEncoder(os.Stdout).Encode(out)
}
'''


class JinjaTokenizer:
    """Just enough of a transformers tokenizer for datakeg's render(): the chat template run by
    jinja2 the way transformers runs it (trim_blocks, lstrip_blocks, raise_exception)."""

    def __init__(self, fixture):
        self.chat_template, self.bos, self.eos = fixture["template"], fixture["bos_token"], fixture["eos_token"]

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False, **kwargs):
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise jinja2.exceptions.TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        return env.from_string(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, bos_token=self.bos or "",
            eos_token=self.eos, **kwargs)


CONVERSATIONS = {
    "plain": [{"role": "user", "content": "What does Tallyho count?"}],
    "system": [{"role": "system", "content": "You are the Tallyho documentation expert."},
               {"role": "user", "content": "What does Tallyho count?"}],
    "multi-turn": [{"role": "system", "content": "Answer briefly."},
                   {"role": "user", "content": "What does Tallyho count?"},
                   {"role": "assistant", "content": "Lines, words and bytes."},
                   {"role": "user", "content": "Which option prints JSON?"}],
}


@pytest.fixture(scope="module")
def go_render(tmp_path_factory):
    go = shutil.which("go")
    if go is None:
        pytest.skip("needs Go to run Ollama's text/template (apt-get install golang-go)")
    folder = tmp_path_factory.mktemp("gorender")
    (folder / "main.go").write_text(GO_RENDER)
    env = {"GOCACHE": str(folder / "cache"), "GOPATH": str(folder / "gopath"), "HOME": str(folder),
           "PATH": "/usr/bin:/bin:/usr/local/bin:/usr/lib/go/bin", "GO111MODULE": "off", "GOTOOLCHAIN": "local"}
    subprocess.run([go, "build", "-o", str(folder / "render"), str(folder / "main.go")], check=True, env=env,
                   cwd=folder, timeout=300)

    def run(cases):
        done = subprocess.run([str(folder / "render")], input=json.dumps(cases), capture_output=True, text=True,
                              check=True, timeout=60)
        return json.loads(done.stdout)

    return run


@pytest.mark.parametrize("family", sorted(FIXTURES))
def test_ollama_template_matches_the_training_render(family, go_render):
    fixture = FIXTURES[family]
    tok = JinjaTokenizer(fixture)
    assert family_of_template(fixture["template"]) == family
    template, stops = TEMPLATES[family]
    cases, expected = [], []
    for name, messages in CONVERSATIONS.items():
        if family == "deepseek-r1" and name == "multi-turn":
            continue  # its template drops earlier <think> blocks; single questions are what datakeg trains
        text = render(tok, messages, add_generation_prompt=True)  # what training and eval feed the model
        if fixture["bos_token"] and text.startswith(fixture["bos_token"]):
            text = text[len(fixture["bos_token"]):]  # Ollama's tokenizer adds BOS itself
        cases.append({"template": template, "messages": messages})
        expected.append((name, text))
    got = go_render(cases)
    for (name, want), have in zip(expected, got):
        assert have == want, f"{family} / {name}"
    # the answer's end is a stop: whatever ends a turn in the training render stops Ollama
    full = render(tok, CONVERSATIONS["plain"] + [{"role": "assistant", "content": "ANSWER"}])
    tail = full.split("ANSWER", 1)[1]
    if tail.strip():
        assert any(s in tail for s in stops), (family, tail)


def test_system_goes_where_training_puts_it():
    gemma = JinjaTokenizer(FIXTURES["gemma"])
    text = render(gemma, CONVERSATIONS["system"], add_generation_prompt=True)
    assert text == ("<bos><start_of_turn>user\nYou are the Tallyho documentation expert.\n\nWhat does Tallyho "
                    "count?<end_of_turn>\n<start_of_turn>model\n")
    qwen = JinjaTokenizer(FIXTURES["qwen2.5"])
    assert "You are Qwen, created by Alibaba Cloud." in render(qwen, CONVERSATIONS["plain"], add_generation_prompt=True)


def test_merged_folder_gets_tokenizer_model_when_the_base_has_one(tmp_path):
    from datakeg.training.torch_backend import copy_tokenizer_files

    base, merged = tmp_path / "base", tmp_path / "merged"
    base.mkdir()
    merged.mkdir()
    (base / "tokenizer.model").write_bytes(b"sentencepiece")
    copy_tokenizer_files(base, merged)
    assert (merged / "tokenizer.model").read_bytes() == b"sentencepiece"
    copy_tokenizer_files(tmp_path / "hub-id-not-a-folder", merged)  # no folder: nothing to copy, no error
