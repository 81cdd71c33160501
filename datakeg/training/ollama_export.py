"""Write an Ollama Modelfile for a merged model: FROM, an explicit TEMPLATE matching the model's
chat template, and PARAMETER stop tokens (without them Ollama rambles past the answer)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from datakeg.support.chat_template import DATE_STRING

QWEN25_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
# Go's text/template: collect the system message (Ollama passes SYSTEM as the first message)
_SYS = '{{- $sys := "" }}{{- range .Messages }}{{- if eq .Role "system" }}{{ $sys = .Content }}{{- end }}{{- end }}'

# Ollama (Go) templates, keyed by the chat format found in the tokenizer's chat template. Each one
# renders a conversation exactly as datakeg.support.chat_template.render does for training (less the
# BOS token, which Ollama's tokenizer adds), system message included: templates that refuse a
# system turn (Gemma, Mistral) get it at the start of the first user turn, as training puts it.
# tests/lib/test_templates.py checks every one with Go against the official chat templates.
TEMPLATES = {
    "chatml": ('{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}'
               '<|im_start|>assistant\n', ["<|im_start|>", "<|im_end|>"]),
    "qwen2.5": ('{{- $sys := "' + QWEN25_DEFAULT_SYSTEM + '" }}{{- range .Messages }}{{- if eq .Role "system" }}'
                '{{ $sys = .Content }}{{- end }}{{- end }}<|im_start|>system\n{{ $sys }}<|im_end|>\n'
                '{{ range .Messages }}{{- if ne .Role "system" }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n'
                '{{ end }}{{- end }}<|im_start|>assistant\n', ["<|im_start|>", "<|im_end|>"]),
    "gemma": (_SYS + '{{- $first := true }}{{- range .Messages }}{{- if eq .Role "user" }}<start_of_turn>user\n'
              '{{ if and $first $sys }}{{ $sys }}\n\n{{ end }}{{ .Content }}<end_of_turn>\n{{ $first = false }}'
              '{{- else if eq .Role "assistant" }}<start_of_turn>model\n{{ .Content }}<end_of_turn>\n{{ end }}'
              '{{- end }}<start_of_turn>model\n', ["<end_of_turn>", "<start_of_turn>"]),
    "llama3": ('{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>'
               '{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n', ["<|eot_id|>", "<|start_header_id|>"]),
    "llama3.1": (_SYS + '<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n'
                 f'Today Date: {DATE_STRING}\n\n' + '{{ $sys }}<|eot_id|>{{- range .Messages }}{{- if ne .Role "system" }}'
                 '<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>{{- end }}{{- end }}'
                 '<|start_header_id|>assistant<|end_header_id|>\n\n', ["<|eot_id|>", "<|start_header_id|>", "<|eom_id|>"]),
    "mistral": (_SYS + '{{- $first := true }}{{- range .Messages }}{{- if eq .Role "user" }}[INST] '
                '{{ if and $first $sys }}{{ $sys }}\n\n{{ end }}{{ .Content }} [/INST]{{ $first = false }}'
                '{{- else if eq .Role "assistant" }}{{ .Content }}</s>{{ end }}{{- end }}', ["[INST]", "</s>"]),
    "phi3": ('{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}<|assistant|>\n',
             ["<|end|>", "<|endoftext|>"]),
    "zephyr": ('{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}</s>\n{{ end }}<|assistant|>\n',
               ["</s>", "<|user|>"]),
    "deepseek-r1": (_SYS + '{{ $sys }}{{- range .Messages }}{{- if eq .Role "user" }}<\uff5cUser\uff5c>{{ .Content }}'
                    '{{- else if eq .Role "assistant" }}<\uff5cAssistant\uff5c>{{ .Content }}'
                    '<\uff5cend\u2581of\u2581sentence\uff5c>{{- end }}{{- end }}<\uff5cAssistant\uff5c>',
                    ["<\uff5cend\u2581of\u2581sentence\uff5c>", "<\uff5cUser\uff5c>"]),
}
# checked in order: the more specific marker first
MARKERS = [("<\uff5cUser\uff5c>", "deepseek-r1"), ("<start_of_turn>", "gemma"), ("Cutting Knowledge Date", "llama3.1"),
           ("<|start_header_id|>", "llama3"), (QWEN25_DEFAULT_SYSTEM, "qwen2.5"), ("<|im_start|>", "chatml"),
           ("[INST]", "mistral"), ("<|end|>", "phi3"), ("<|user|>", "zephyr")]


def family_of_template(template: str | None) -> str:
    template = template or ""
    return next((family for marker, family in MARKERS if marker in template), "chatml")


def chat_family(model_dir: Path) -> str:
    from transformers import AutoTokenizer

    return family_of_template(AutoTokenizer.from_pretrained(model_dir).chat_template)


def export_ollama(merged: Path, dest: Path, name: str, system_message: str | None = None) -> dict:
    """Write DEST/Modelfile for the merged model; with llama.cpp's converter available (env
    LLAMA_CPP_DIR or convert_hf_to_gguf.py on PATH) also a GGUF, which Ollama imports for any
    architecture; otherwise FROM points at the safetensors folder (Ollama imports those for the
    architectures it supports: Llama, Mistral, Gemma, Phi-3, Qwen2).

    DEST is written whole into a temporary sibling and renamed into place (replacing an earlier
    export): an interrupted export leaves the previous DEST or none, never a Modelfile without its GGUF."""
    import os

    from datakeg.training.shared import atomic_dir

    merged, dest = Path(merged).resolve(), Path(dest)
    family = chat_family(merged)
    template, stops = TEMPLATES[family]
    converter = shutil.which("convert_hf_to_gguf.py")
    if os.environ.get("LLAMA_CPP_DIR"):
        candidate = Path(os.environ["LLAMA_CPP_DIR"]) / "convert_hf_to_gguf.py"
        converter = str(candidate) if candidate.exists() else converter
    gguf_name = f"{name.replace(':', '-').replace('/', '-')}.gguf"
    source = dest / gguf_name if converter else merged  # where FROM points once DEST is in place
    lines = [f"FROM {source}", f'TEMPLATE """{template}"""']
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    lines += ["PARAMETER temperature 0.2"]
    if system_message:
        lines.append(f'SYSTEM """{system_message}"""')

    def write(tmp: Path) -> None:
        if converter:
            subprocess.run(["python", converter, str(merged), "--outfile", str(tmp / gguf_name), "--outtype", "f16"],
                           check=True)
        (tmp / "Modelfile").write_text("\n".join(lines) + "\n", encoding="utf-8")

    atomic_dir(dest, write)
    modelfile = dest / "Modelfile"
    return {"modelfile": str(modelfile), "family": family, "from": str(source),
            "command": f"ollama create {name} -f {modelfile}"}
