"""Settings of ``lqs pretrain``, ``lqs evaluate`` and ``lqs export-hf``: one dataclass per step,
the single source of its flags and pipeline keys (:mod:`lqs_megatron.options`).

A field's name is its YAML key and, with dashes, its flag; the string under it is its help text.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from lqs_megatron.errors import LQSError
from lqs_megatron.options import Deprecated, check_seed, internal, option

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "bf16", "fp32")
DEVICES = ("cuda", "cpu")
MODEL, DATA, OPTIM, ONLINE, RUN = "model (one of)", "data", "optimisation", "online selection", "run"
ONLINE_METHODS = ("dot", "greedy", "boltzmann")
PACKED_EVAL_SAMPLES = 256
"""``--eval-samples`` when not given and the validation is of packed samples (no ``--eval-max-length``)."""
ONLINE_SETTINGS = (
    "online_select",
    "target",
    "candidates_per_pick",
    "target_refresh",
    "target_batch_size",
    "select_temperature",
)


@dataclass
class PretrainConfig:
    """Validated settings of a pretraining run. Defaults follow the PDS/DELT papers where they set one."""

    help_groups: ClassVar[tuple[str, ...]] = (MODEL, DATA, OPTIM, ONLINE, RUN)
    data: list[str] = option(metavar="PREFIX", group=DATA)
    """Indexed dataset prefix(es), consumed in stored order (or --shuffle)."""
    out: str = option(metavar="DIR", group=RUN)
    """Checkpoint directory."""
    max_length: int = option(metavar="L", group=OPTIM)
    """Tokens per packed training sample, the model's context."""
    global_batch_size: int = option(group=OPTIM)
    """Samples per optimizer step over all data-parallel ranks and micro-batches."""
    steps: int = option(group=OPTIM)
    """Optimizer steps."""
    lr: float = option(group=OPTIM)
    """Peak learning rate."""
    model_config: str | None = option(None, metavar="NAME", group=MODEL)
    """Named config (tiny, 160M, 470M, 1B, 1.7B), YAML path, or an HF model directory / config.json (its
    architecture, e.g. Qwen2 or Llama); random init; needs --tokenizer (the vocabulary comes from it)."""
    tokenizer: str | None = option(None, group=MODEL)
    """Tokenizer directory: the vocabulary and special tokens (with --model-config)."""
    init_from: str | None = option(None, metavar="HF_DIR", group=MODEL)
    """Hugging Face Llama/Mistral/Qwen2 directory to start from instead."""
    allow_tokenizer_mismatch: bool = option(False, group=DATA)
    """Train on --data / --valid-data whose recorded tokenizer differs from --tokenizer's (or --init-from's)
    anyway (a warning)."""
    data_weights: list[float] | None = option(None, metavar="W", group=DATA)
    """Blend weights, one per --data prefix (default: equal)."""
    valid_data: str | None = option(None, metavar="PREFIX", group=DATA)
    """Held-out indexed dataset for the periodic validation loss."""
    eval_interval: int = option(1000, group=DATA)
    """Validate every N steps and after the last (0: only after the last)."""
    eval_samples: int | None = option(None, group=DATA)
    """Validation samples per evaluation (default: 256 packed samples; with --eval-max-length every sequence)."""
    eval_max_length: int | None = option(None, metavar="L", group=DATA)
    """Validate as ``lqs evaluate --max-length L`` does (each --valid-data sequence one example, cut to L+1 tokens,
    the mean of the examples' mean token losses), so each point of the curve is the number ``lqs evaluate`` gives
    for the checkpoint of that step; default: packed samples of --max-length tokens."""
    shuffle: bool = option(False, group=DATA)
    """Shuffle the packed samples (seeded) instead of the stored order."""
    micro_batch_size: int | None = option(None, group=OPTIM)
    """Samples per forward/backward per rank (default: the whole per-rank batch)."""
    min_lr: float | None = option(None, group=OPTIM)
    """Final learning rate of the cosine schedule (default: lr / 10, as in the papers)."""
    warmup_steps: int | None = option(None, group=OPTIM)
    """Linear warm-up steps (default: min(2000, steps / 10): the papers' 2000, at most a tenth of the run)."""
    weight_decay: float = option(0.01, group=OPTIM)
    """AdamW weight decay (matrices only)."""
    adam_beta1: float = option(0.9, group=OPTIM)
    """AdamW beta1."""
    adam_beta2: float = option(0.98, group=OPTIM)
    """AdamW beta2."""
    adam_eps: float = option(1e-6, group=OPTIM)
    """AdamW epsilon."""
    clip_grad: float = option(1.0, group=OPTIM)
    """Global gradient-norm clip (0: off)."""
    seed: int = option(0, group=OPTIM)
    """Seeds the initial weights and --shuffle."""
    online_select: str | None = option(None, metavar="METHOD", choices=ONLINE_METHODS, group=ONLINE)
    """Online data selection (docs/online_selection.md): every step draws --candidates-per-pick x
    --global-batch-size samples and trains on the --global-batch-size of them that help --target most:
    dot (largest <g_i, grad L_target>), greedy (with the pairwise interactions <g_i, g_j>, GREATS-style),
    boltzmann (sampled with probability ~ exp(score / (T std)), OPUS-style)."""
    target: str | None = option(None, metavar="PREFIX", group=ONLINE)
    """Target dataset (as made by lqs tokenize-target) whose loss --online-select lowers."""
    candidates_per_pick: int = option(4, metavar="C", group=ONLINE)
    """Candidates per kept sample with --online-select (each step reads C x --global-batch-size samples)."""
    target_refresh: int = option(1, metavar="M", group=ONLINE)
    """Recompute the target gradient every M steps (cached in between, and in the checkpoints)."""
    target_batch_size: int | None = option(None, metavar="N", group=ONLINE)
    """Target sequences per target gradient (default: --global-batch-size); consecutive sequences of
    --target, cycling, a new batch at every refresh."""
    select_temperature: float = option(1.0, metavar="T", group=ONLINE)
    """Temperature of --online-select boltzmann, in units of the step's score standard deviation."""
    tp: int = option(1, group=RUN)
    """Tensor-parallel size; data parallelism is world size / tp."""
    distributed_optimizer: bool = option(False, group=RUN)
    """Shard the AdamW state over the data-parallel ranks (ZeRO-1: about 1/dp of it per rank); same updates."""
    make_vocab_size_divisible_by: int = option(128, group=RUN)
    """Pad the vocabulary to a multiple of this times tp."""
    save_interval: int = option(1000, group=RUN)
    """Checkpoint every N steps and after the last (0: only after the last)."""
    resume: bool = option(False, group=RUN)
    """Continue from --out's latest checkpoint if there is one."""
    allow_changed_settings: bool = option(False, group=RUN)
    """With --resume: continue although the learning rate, the schedule, the AdamW settings, --clip-grad or
    --precision differ from the run's (each change is logged and recorded in trainer.json); without it
    such a change is refused. A change of the data order or the model is refused always."""
    precision: str = option("auto", choices=PRECISIONS, group=RUN)
    """auto: bf16 autocast on CUDA, fp32 on the CPU; bf16; fp32."""
    compile: bool = option(False, group=RUN)
    """torch.compile the model."""
    deterministic: bool = option(False, group=RUN)
    """Deterministic algorithms, for reproducible loss curves."""
    log_interval: int = option(10, group=RUN)
    """Log a line every N steps (metrics.jsonl gets every step)."""
    stop_after: int | None = option(None, hidden=True, group=RUN)
    """Test hook: stop after this step as if killed (the schedule still spans --steps)."""
    device: str | None = option(None, choices=DEVICES, group=RUN)
    """cuda or cpu (default: cuda when available)."""
    skip_nonfinite: int = option(0, metavar="N", group=RUN)
    """Skip up to N batches whose loss or gradient norm is NaN/Inf (logged) instead of stopping at the first."""
    keep_last: int | None = option(None, metavar="N", group=RUN)
    """Keep only the N newest checkpoints (default: all; the one ``latest`` names is never deleted)."""
    tensorboard: bool = option(True, flag="--no-tensorboard", group=RUN)
    """Do not write TensorBoard scalars to OUT/tb (they are written when tensorboard is installed)."""
    wandb: str | None = option(None, metavar="PROJECT", group=RUN)
    """Also log to this Weights & Biases project (needs ``pip install wandb``)."""
    extra: dict = internal(default_factory=dict)
    """Free-form metadata stored with the checkpoints."""

    def __post_init__(self) -> None:
        if (self.model_config is None) == (self.init_from is None):
            raise LQSError("give exactly one of --model-config (random init) or --init-from HF_DIR")
        if not self.data:
            raise LQSError("--data needs at least one dataset prefix")
        from lqs_megatron.training.data import parse_blend

        self.data, self.data_weights = parse_blend(self.data, self.data_weights)
        for name in (
            "max_length",
            "global_batch_size",
            "steps",
            "eval_samples",
            "eval_max_length",
            "log_interval",
            "tp",
        ):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise LQSError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_interval", "save_interval", "weight_decay", "clip_grad"):
            if getattr(self, name) < 0:
                raise LQSError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise LQSError(f"--lr must be > 0, got {self.lr}")
        check_seed(self.seed)
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
        if self.skip_nonfinite < 0:
            raise LQSError(f"--skip-nonfinite must be >= 0, got {self.skip_nonfinite}")
        if self.keep_last is not None and self.keep_last < 1:
            raise LQSError(f"--keep-last must be >= 1, got {self.keep_last}")
        if self.stop_after is not None and self.stop_after < 1:
            raise LQSError(f"--stop-after must be >= 1, got {self.stop_after}")
        if not 0 <= self.adam_beta1 < 1 or not 0 <= self.adam_beta2 < 1:
            raise LQSError("--adam-beta1 and --adam-beta2 must be in [0, 1)")
        self._check_online()

    def _check_online(self) -> None:
        if self.online_select is None:
            if self.target is not None:
                raise LQSError("--target is used by --online-select METHOD only; give both or neither")
            return
        if self.online_select not in ONLINE_METHODS:
            raise LQSError(f"--online-select must be one of {', '.join(ONLINE_METHODS)}, got {self.online_select!r}")
        if self.target is None:
            raise LQSError(f"--online-select {self.online_select} needs --target PREFIX (lqs tokenize-target output)")
        if self.target_batch_size is None:
            self.target_batch_size = self.global_batch_size
        for name in ("candidates_per_pick", "target_refresh", "target_batch_size"):
            if getattr(self, name) < 1:
                raise LQSError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not self.select_temperature > 0:
            raise LQSError(f"--select-temperature must be > 0, got {self.select_temperature}")

    @property
    def samples_per_step(self) -> int:
        """Samples the stream gives per step: the global batch, times --candidates-per-pick when selecting."""
        return self.global_batch_size * (self.candidates_per_pick if self.online_select else 1)

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

    #: settings --resume compares beyond the stream key: the model (refused always), the optimisation
    #: (refused unless --allow-changed-settings)
    RESUME_FIXED: ClassVar[tuple[str, ...]] = ("model_config", "init_from", "make_vocab_size_divisible_by")
    RESUME_FREE: ClassVar[tuple[str, ...]] = (
        "steps",
        "lr",
        "min_lr",
        "warmup_steps",
        "weight_decay",
        "adam_beta1",
        "adam_beta2",
        "adam_eps",
        "clip_grad",
        "precision",
    )

    def stream_key(self) -> dict:
        """The settings that define the sample stream; a resumed run must keep them."""
        keys = ["data", "data_weights", "max_length", "global_batch_size", "shuffle", "seed"]
        if self.shuffle:  # the permutation spans all steps' samples
            keys.append("steps")
        return {k: getattr(self, k) for k in keys}


def check_out_dir(cfg: PretrainConfig, crc: bool = False, warn: bool = False) -> Path | None:
    """The step directory to resume from (None: a fresh start); errors when ``--out`` holds a run
    and ``--resume`` is missing, or when the settings that define the data order changed.

    With ``--resume`` the newest checkpoint that validates is chosen (``crc``: verify checksums
    too, not only sizes and headers); each newer one that does not is named in a warning."""
    from lqs_megatron.training.checkpoint import find_resume_dir

    marker = Path(cfg.out) / "latest"
    if not marker.is_file():
        return None
    if not cfg.resume:
        raise LQSError(f"{cfg.out} already holds checkpoints; pass --resume to continue, or choose another --out")
    step_dir, skipped = find_resume_dir(cfg.out, crc=crc)
    for line in skipped if warn else ():
        logger.warning("--resume: skipping %s", line)
    resume_changes(cfg, json.loads((step_dir / "trainer.json").read_text()), step_dir, warn=warn)
    return step_dir


def resume_changes(cfg: PretrainConfig, trainer: dict, step_dir: Path, warn: bool = False) -> list[dict]:
    """The settings that differ from the run's ``trainer.json`` (``utils/resume.py``): a change of the
    data order (the stream key) or the model is refused; one of the optimisation unless
    ``--allow-changed-settings`` (then it is returned, to be recorded)."""
    from lqs_megatron.utils.resume import changed_settings, check_resume

    stream, saved, now = cfg.stream_key(), trainer.get("config", {}), cfg.to_dict()
    fixed = changed_settings(PretrainConfig, trainer["stream"], stream, stream)
    fixed += changed_settings(PretrainConfig, saved, now, cfg.RESUME_FIXED)
    # online selection reads another stream and keeps other samples: switching it on or off, or changing
    # how it selects, is refused too (a run saved before these settings existed had it off)
    defaults = {f.name: f.default for f in dataclasses.fields(PretrainConfig) if f.name in ONLINE_SETTINGS}
    saved_online = {**defaults, **{k: saved[k] for k in ONLINE_SETTINGS if k in saved}}
    if saved_online["online_select"] or cfg.online_select:
        fixed += changed_settings(PretrainConfig, saved_online, now, ONLINE_SETTINGS)
    free = changed_settings(PretrainConfig, saved, now, [k for k in cfg.RESUME_FREE if k not in stream])
    why = "the data order or the model would change"
    return check_resume(str(step_dir), fixed, free, cfg.allow_changed_settings, why, "trainer.json", warn)


def choose_resume_dir(cfg: PretrainConfig, dims) -> Path | None:
    """:func:`check_out_dir` with checksums, run on global rank 0 only and told to every rank (one choice)."""
    choice = None
    with dims.all_or_none():
        if dims.is_main:
            d = check_out_dir(cfg, crc=True, warn=True)
            choice = None if d is None else str(d)
    choice = dims.broadcast_object(choice)
    return None if choice is None else Path(choice)


def preflight(cfg: PretrainConfig) -> None:
    """Cheap checks before any process group starts: datasets exist, the model splits ``--tp`` ways,
    ``--out`` and ``--resume`` agree. Every rank runs them (no collective)."""
    from lqs_megatron.data.datasets.indexed import idx_path
    from lqs_megatron.data.datasets.view import data_exists

    for p in [*cfg.data, *([cfg.valid_data] if cfg.valid_data else []), *([cfg.target] if cfg.target else [])]:
        if not data_exists(p):
            raise LQSError(
                f"indexed dataset {p!r}: missing {p}.bin or {idx_path(p)} (expected PREFIX.bin + .idx, or a view "
                "PREFIX.view.json)"
            )
    if cfg.model_config is not None:
        from lqs_megatron.models.config import load_model_config
        from lqs_megatron.models.parallelize import check_tp

        check_tp(load_model_config(cfg.model_config), cfg.tp, name=f"model config {cfg.model_config!r}")
    from lqs_megatron.utils.lock import check_unlocked

    check_unlocked(cfg.out)
    check_out_dir(cfg)


@dataclass
class EvaluateConfig:
    """Settings of ``lqs evaluate``: the mean per-example loss of a model on an indexed dataset."""

    model: str = option(metavar="HF_DIR|CKPT_DIR")
    """Hugging Face Llama/Mistral/Qwen2 directory or lqs checkpoint (its root: the latest step; or a step directory)."""
    data: str = option(metavar="PREFIX")
    """Indexed dataset prefix."""
    max_length: int = option(metavar="L")
    """Each example is cut to L+1 tokens."""
    micro_batch_size: int = option(16, deprecated=("--batch-size",))
    """Examples per forward pass per rank."""
    limit: int | None = option(None, metavar="N")
    """Only the first N sequences."""
    tp: int = 1
    """Tensor-parallel size; data parallelism is world size / tp."""
    precision: str = option("auto", choices=PRECISIONS)
    """auto: bf16 autocast on CUDA, fp32 on the CPU; bf16; fp32."""
    device: str | None = option(None, choices=DEVICES)
    """cuda or cpu (default: cuda when available)."""
    allow_tokenizer_mismatch: bool = False
    """Evaluate on --data whose recorded tokenizer differs from --model's anyway (a warning)."""

    def __post_init__(self) -> None:
        for name in ("max_length", "micro_batch_size", "tp"):
            if getattr(self, name) < 1:
                raise LQSError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.limit is not None and self.limit < 1:
            raise LQSError(f"--limit must be >= 1, got {self.limit}")


EXPORT_PRECISIONS = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


@dataclass
class ExportHFConfig:
    """Settings of ``lqs export-hf``: a checkpoint as a Hugging Face directory."""

    checkpoint: str = option(metavar="CKPT_DIR")
    """Checkpoint root (its latest step) or a step directory."""
    out: str = option(metavar="HF_DIR")
    """Output directory (replaced atomically, only when absent, empty or an earlier output of this command:
    docs/design.md, "Outputs")."""
    precision: str = option(
        "fp32",
        choices=tuple(EXPORT_PRECISIONS),
        deprecated=(Deprecated("--dtype", values={v: k for k, v in EXPORT_PRECISIONS.items()}),),
    )
    """Dtype of the written weights."""

    @property
    def torch_dtype_name(self) -> str:
        """The ``torch`` dtype name of ``precision`` (``float32``, ``bfloat16``, ``float16``)."""
        return EXPORT_PRECISIONS[self.precision]
