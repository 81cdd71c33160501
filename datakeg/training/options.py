"""What a fine-tune is asked to do (``FinetuneOptions``) and how to install each backend."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

TORCH_HINT = 'pip install torch==2.13.0 && pip install -e ".[torch]"   (a CUDA build of torch on a GPU machine)'
MLX_HINT = 'pip install -e ".[mlx]"   (MLX is for Apple Silicon)'


@dataclass
class FinetuneOptions:
    data: Path
    base_model: str
    output: Path
    backend: str = "auto"
    epochs: float = 10.0  # defaults measured: benchmarks/finetune_facts.py (README, finetune)
    batch_size: int = 4
    learning_rate: float = 1e-3
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.05
    max_length: int = 1024
    system_message: str | None = None
    seed: int = 0
    gradient_checkpointing: bool | None = None  # default: on with CUDA, or when the memory estimate needs it
    save_every: int = 50  # checkpoint every N steps (and at the end of each epoch); 0: epochs only
    resume: bool = False  # continue from OUTPUT/checkpoints' newest checkpoint
    force: bool = False  # write into a non-empty OUTPUT that datakeg finetune did not write
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["data"], d["output"] = str(self.data), str(self.output)
        return d
