"""Write an Ollama Modelfile for a merged model: FROM, an explicit TEMPLATE matching the model's
chat template, and PARAMETER stop tokens (without them Ollama rambles past the answer)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

# Ollama (Go) templates, keyed by the chat format found in the tokenizer's chat template.
TEMPLATES = {
    "chatml": ('{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}'
               '<|im_start|>assistant\n', ["<|im_start|>", "<|im_end|>"]),
    "gemma": ('{{- range .Messages }}<start_of_turn>{{ if eq .Role "assistant" }}model{{ else }}user{{ end }}\n'
              '{{ .Content }}<end_of_turn>\n{{ end }}<start_of_turn>model\n', ["<end_of_turn>", "<start_of_turn>"]),
    "llama3": ('{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>'
               '{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n', ["<|eot_id|>", "<|start_header_id|>"]),
    "mistral": ('{{- range .Messages }}{{ if eq .Role "user" }}[INST] {{ .Content }} [/INST]'
                '{{ else if eq .Role "assistant" }}{{ .Content }}</s>{{ end }}{{ end }}', ["[INST]", "</s>"]),
    "phi3": ('{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}<|assistant|>\n',
             ["<|end|>", "<|endoftext|>"]),
    "zephyr": ('{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}</s>\n{{ end }}<|assistant|>\n',
               ["</s>", "<|user|>"]),
}
MARKERS = [("<start_of_turn>", "gemma"), ("<|start_header_id|>", "llama3"), ("<|im_start|>", "chatml"),
           ("[INST]", "mistral"), ("<|end|>", "phi3"), ("<|user|>", "zephyr")]


def chat_family(model_dir: Path) -> str:
    from transformers import AutoTokenizer

    template = AutoTokenizer.from_pretrained(model_dir).chat_template or ""
    return next((family for marker, family in MARKERS if marker in template), "chatml")


def export_ollama(merged: Path, dest: Path, name: str, system_message: str | None = None) -> dict:
    """Write DEST/Modelfile for the merged model; with llama.cpp's converter available (env
    LLAMA_CPP_DIR or convert_hf_to_gguf.py on PATH) also a GGUF, which Ollama imports for any
    architecture; otherwise FROM points at the safetensors folder (Ollama imports those for the
    architectures it supports: Llama, Mistral, Gemma, Phi-3, Qwen2)."""
    import os

    merged, dest = Path(merged).resolve(), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    family = chat_family(merged)
    template, stops = TEMPLATES[family]
    source = merged
    converter = shutil.which("convert_hf_to_gguf.py")
    if os.environ.get("LLAMA_CPP_DIR"):
        candidate = Path(os.environ["LLAMA_CPP_DIR"]) / "convert_hf_to_gguf.py"
        converter = str(candidate) if candidate.exists() else converter
    if converter:
        gguf = dest / f"{name.replace(':', '-').replace('/', '-')}.gguf"
        subprocess.run(["python", converter, str(merged), "--outfile", str(gguf), "--outtype", "f16"], check=True)
        source = gguf
    lines = [f"FROM {source}", f'TEMPLATE """{template}"""']
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    lines += ["PARAMETER temperature 0.2"]
    if system_message:
        lines.append(f'SYSTEM """{system_message}"""')
    modelfile = dest / "Modelfile"
    modelfile.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"modelfile": str(modelfile), "family": family, "from": str(source),
            "command": f"ollama create {name} -f {modelfile}"}
