"""Settings of one pretraining run (``lqs pretrain``); every field is a flag of the same name."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from lqs_megatron.errors import LQSError

PRECISIONS = ("auto", "bf16", "fp32")


@dataclass
class PretrainConfig:
    """Validated settings of a pretraining run. Defaults follow the PDS/DELT papers where they set one."""

    data: list[str]
    """Indexed-dataset prefixes (``--data``), consumed in stored order."""
    out: str
    """Checkpoint directory (``--out``)."""
    max_length: int
    """Tokens per packed training sample, the model's context (``--max-length``)."""
    global_batch_size: int
    """Samples per optimizer step over all data-parallel ranks and micro-batches (``--global-batch-size``)."""
    steps: int
    """Optimizer steps (``--steps``)."""
    lr: float
    """Peak learning rate (``--lr``)."""
    model_config: str | None = None
    """Named config (tiny, 160M, 470M, 1B, 1.7B) or YAML path, randomly initialised (``--model-config``)."""
    tokenizer: str | None = None
    """Tokenizer directory giving the vocabulary and special tokens (``--tokenizer``)."""
    init_from: str | None = None
    """Hugging Face Mistral/Llama directory to start from instead (``--init-from``)."""
    data_weights: list[float] | None = None
    """Blend weights, one per ``--data`` prefix (``--data-weights``); default equal."""
    valid_data: str | None = None
    """Held-out indexed dataset for the periodic validation loss (``--valid-data``)."""
    eval_interval: int = 1000
    """Validation every N steps, and after the last (``--eval-interval``; 0 = only after the last)."""
    eval_samples: int = 256
    """Packed validation samples per evaluation (``--eval-samples``)."""
    micro_batch_size: int | None = None
    """Samples per forward/backward on one rank (``--micro-batch-size``); default: the whole local batch."""
    min_lr: float | None = None
    """Final learning rate of the cosine schedule (``--min-lr``); default ``lr / 10`` as in the papers."""
    warmup_steps: int | None = None
    """Linear warm-up steps (``--warmup-steps``); default the papers' 2000, capped at 10% of ``steps``."""
    weight_decay: float = 0.01
    """AdamW weight decay on matrices (``--weight-decay``)."""
    adam_beta1: float = 0.9
    """AdamW beta1 (``--adam-beta1``)."""
    adam_beta2: float = 0.98
    """AdamW beta2 (``--adam-beta2``)."""
    adam_eps: float = 1e-6
    """AdamW epsilon (``--adam-eps``)."""
    clip_grad: float = 1.0
    """Global gradient-norm clip (``--clip-grad``; 0 = off)."""
    seed: int = 0
    """Seeds the initial weights and the shuffle (``--seed``)."""
    shuffle: bool = False
    """Shuffle the packed samples (seeded) instead of the stored order (``--shuffle``)."""
    tp: int = 1
    """Tensor-parallel size (``--tp``); data parallelism is world_size / tp."""
    make_vocab_size_divisible_by: int = 128
    """Pad the vocabulary to a multiple of this times tp (``--make-vocab-size-divisible-by``)."""
    save_interval: int = 1000
    """Checkpoint every N steps, and after the last (``--save-interval``; 0 = only after the last)."""
    resume: bool = False
    """Continue from ``out``'s latest checkpoint if there is one (``--resume``)."""
    precision: str = "auto"
    """``auto`` (bf16 autocast on CUDA, fp32 on the CPU), ``bf16`` or ``fp32`` (``--precision``)."""
    compile: bool = False
    """``torch.compile`` the model (``--compile``)."""
    deterministic: bool = False
    """Deterministic algorithms, for reproducible loss curves (``--deterministic``)."""
    log_interval: int = 10
    """Log a line every N steps (``--log-interval``); metrics.jsonl gets every step."""
    stop_after: int | None = None
    """Stop after this step as if killed (the schedule still spans ``steps``; ``--stop-after``)."""
    device: str | None = None
    """``cuda`` or ``cpu`` (``--device``); default CUDA when available."""
    extra: dict = field(default_factory=dict)
    """Free-form metadata stored with the checkpoints."""

    def __post_init__(self) -> None:
        if (self.model_config is None) == (self.init_from is None):
            raise LQSError("give exactly one of --model-config (random init) or --init-from HF_DIR")
        if not self.data:
            raise LQSError("--data needs at least one dataset prefix")
        from lqs_megatron.training.data import parse_blend  # noqa: PLC0415 - also Megatron's "0.3 P1 0.7 P2"

        self.data, self.data_weights = parse_blend(self.data, self.data_weights)
        for name in ("max_length", "global_batch_size", "steps", "eval_samples", "log_interval", "tp"):
            if getattr(self, name) < 1:
                raise LQSError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_interval", "save_interval", "weight_decay", "clip_grad"):
            if getattr(self, name) < 0:
                raise LQSError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise LQSError(f"--lr must be > 0, got {self.lr}")
        if self.min_lr is None:
            self.min_lr = self.lr / 10
        if not 0 <= self.min_lr <= self.lr:
            raise LQSError(f"--min-lr must be in [0, --lr], got {self.min_lr}")
        if self.warmup_steps is None:
            self.warmup_steps = min(2000, self.steps // 10)
        if not 0 <= self.warmup_steps <= self.steps:
            raise LQSError(f"--warmup-steps must be in [0, --steps], got {self.warmup_steps}")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise LQSError(f"--micro-batch-size must be >= 1, got {self.micro_batch_size}")
        if self.make_vocab_size_divisible_by < 1:
            raise LQSError("--make-vocab-size-divisible-by must be >= 1")
        if self.precision not in PRECISIONS:
            raise LQSError(f"--precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.stop_after is not None and self.stop_after < 1:
            raise LQSError(f"--stop-after must be >= 1, got {self.stop_after}")
        if not 0 <= self.adam_beta1 < 1 or not 0 <= self.adam_beta2 < 1:
            raise LQSError("--adam-beta1 and --adam-beta2 must be in [0, 1)")

    def local_batch(self, dp: int) -> tuple[int, int]:
        """``(samples per rank per step, micro-batch size)`` for ``dp`` data-parallel ranks."""
        if self.global_batch_size % dp:
            raise LQSError(
                f"--global-batch-size {self.global_batch_size} is not divisible by the data-parallel size {dp}"
            )
        local = self.global_batch_size // dp
        micro = self.micro_batch_size or local
        if local % micro:
            raise LQSError(
                f"--micro-batch-size {micro} does not divide the per-rank batch {local} "
                f"(--global-batch-size {self.global_batch_size} / dp {dp})"
            )
        return local, micro

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def stream_key(self) -> dict:
        """The settings that define the sample stream; a resumed run must keep them."""
        keys = ["data", "data_weights", "max_length", "global_batch_size", "shuffle", "seed"]
        if self.shuffle:  # the permutation spans all steps' samples
            keys.append("steps")
        return {k: getattr(self, k) for k in keys}


def check_out_dir(cfg: PretrainConfig) -> Path | None:
    """The step directory to resume from (None: a fresh start); errors when ``--out`` holds a run
    and ``--resume`` is missing, or when the settings that define the data order changed."""
    marker = Path(cfg.out) / "latest"
    if not marker.is_file():
        return None
    step_dir = Path(cfg.out) / marker.read_text().strip()
    if not cfg.resume:
        raise LQSError(f"{cfg.out} already holds checkpoints; pass --resume to continue, or choose another --out")
    state_file = step_dir / "trainer.json"
    if not state_file.is_file():
        raise LQSError(f"{marker} names {step_dir.name}, which is missing or incomplete")
    saved = json.loads(state_file.read_text())["stream"]
    for k, v in json.loads(json.dumps(cfg.stream_key())).items():
        if saved.get(k) != v:
            raise LQSError(
                f"--resume from {step_dir}: --{k.replace('_', '-')} was {saved.get(k)!r}, now {v!r}; "
                "the data order would change (keep the settings of the run, or start a new --out)"
            )
    return step_dir


def preflight(cfg: PretrainConfig) -> None:
    """Cheap checks before any process group starts: datasets exist, the model splits ``--tp`` ways,
    ``--out`` and ``--resume`` agree. Every rank runs them (no collective)."""
    from lqs_megatron.data.indexed import dataset_exists, idx_path  # noqa: PLC0415

    for p in [*cfg.data, *([cfg.valid_data] if cfg.valid_data else [])]:
        if not dataset_exists(p):
            raise LQSError(f"indexed dataset {p!r}: missing {p}.bin or {idx_path(p)} (expected PREFIX.bin + .idx)")
    if cfg.model_config is not None:
        from lqs_megatron.models.config import load_model_config  # noqa: PLC0415
        from lqs_megatron.models.parallelize import check_tp  # noqa: PLC0415

        check_tp(load_model_config(cfg.model_config), cfg.tp, name=f"model config {cfg.model_config!r}")
    check_out_dir(cfg)
