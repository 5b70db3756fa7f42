"""Settings of ``lqs prepare-scorer-data``, ``lqs train-scorer`` and ``lqs score``: the single source
of their flags, pipeline keys and defaults (PDS/DELT's scorer recipe). Free of torch.

A field's name is its YAML key and, with dashes, its flag; the string under it is its help text.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from lqs_megatron.data.preprocess.sharding import Shard, parse_shard
from lqs_megatron.errors import LQSError
from lqs_megatron.options import Deprecated, check_seed, internal, option

PRECISIONS = ("auto", "bf16", "fp32")
DEVICES = ("cuda", "cpu")
_NO_BF16 = Deprecated("--no-bf16", const="fp32")
DEFAULT_BATCH_SIZE = 512
MIN_STEPS_PER_EPOCH = 8


@dataclass
class PrepareScorerConfig:
    """Settings of ``lqs prepare-scorer-data``."""

    proxy: str = option(metavar="PREFIX")
    """Proxy indexed dataset (the annotated sequences)."""
    scores: str = option(metavar="FILE.npy")
    """One score per proxy sequence (proxy order)."""
    out: str = option(metavar="DIR")
    """Output directory (replaced atomically, only when absent, empty or an earlier output of this command:
    docs/design.md, "Outputs")."""
    valid_num: int | None = option(None, metavar="M")
    """Validation sequences (default: 10% of the proxy set, at least 1)."""
    seed: int = 0
    """Seed of the train/valid split."""
    src_tokenizer: str | None = None
    """Tokenizer of the proxy data (with --dst-tokenizer: recorded, and the data retokenized if they differ)."""
    dst_tokenizer: str | None = None
    """Tokenizer of the scorer."""
    workers: int | None = None
    """Retokenization processes (default: one per core)."""
    allow_constant_scores: bool = False
    """Go on, with a warning, when the scores are constant or nearly so (a scorer trained on them learns
    nothing: validation Pearson 0); refused by default."""

    def __post_init__(self) -> None:
        check_seed(self.seed)
        if self.valid_num is not None and self.valid_num < 1:
            raise LQSError(f"--valid-num must be >= 1, got {self.valid_num}")


@dataclass
class TrainScorerRun:
    """What ``lqs train-scorer`` trains and where (its hyper-parameters are :class:`TrainScorerConfig`)."""

    data: str = option(metavar="DIR")
    """Directory written by `lqs prepare-scorer-data`."""
    out: str = option(metavar="CKPT_DIR")
    """Output checkpoint directory."""
    base: str | None = option(None, metavar="HF_DIR", one_of="backbone")
    """Local HF causal-LM directory to fine-tune (Llama/Mistral/Qwen2: fast path, else the generic HF backbone);
    or --model-config."""
    model_config: str | None = option(None, metavar="NAME", one_of="backbone")
    """Named model config or YAML, random init (needs --tokenizer); or --base."""
    tokenizer: str | None = None
    """Tokenizer (default with --base: the base's own)."""
    resume: bool = False
    """Continue from OUT's newest valid checkpoint."""
    allow_changed_settings: bool = False
    """With --resume: continue although --epochs, the learning rate, the schedule, --weight-decay, --clip-grad
    or --precision differ from the run's (each change is logged and recorded in trainer.json); without it
    such a change is refused. A change of the data order (--global-batch-size, --seed, --max-length,
    --no-bos) or of the backbone is refused always."""
    device: str | None = option(None, choices=DEVICES)
    """cuda or cpu (default: cuda when available)."""
    allow_tokenizer_mismatch: bool = False
    """Train on scorer data whose recorded tokenizer differs from the scorer's anyway (a warning)."""

    def __post_init__(self) -> None:
        if (self.base is None) == (self.model_config is None):
            raise LQSError("give exactly one of --base HF_DIR or --model-config NAME")


@dataclass
class TrainScorerConfig:
    """Hyper-parameters of ``lqs train-scorer`` (defaults: PDS/DELT's scorer recipe)."""

    epochs: int = 5
    """Passes over the training split."""
    lr: float = 1e-4
    """Peak learning rate."""
    min_lr: float = 0.0
    """Learning rate at the end of the cosine."""
    weight_decay: float = 0.01
    """AdamW weight decay on matrices and embeddings."""
    warmup_steps: int = option(10, deprecated=("--warmup",))
    """Linear warm-up steps."""
    clip_grad: float = 1.0
    """Clip the global gradient norm to this (0: off)."""
    global_batch_size: int | None = option(None, deprecated=("--batch-size",))
    """Sequences per optimizer step over all ranks (default: 512, or the largest power of two that gives an
    epoch at least 8 steps on a smaller training split)."""
    micro_batch_size: int | None = None
    """Sequences per rank per forward/backward (default: the largest divisor of the global batch / ranks
    up to 16)."""
    eval_batch_tokens: int | None = None
    """Token budget of a validation batch (default: 4096 on the CPU, 32768 on CUDA)."""
    max_length: int = 1024
    """Tokens read per sequence, BOS included."""
    use_bos: bool = option(True, flag="--no-bos", help="Do not prepend the tokenizer's BOS to each sequence.")
    """Prepend the tokenizer's BOS to each sequence."""
    seed: int = 0
    """Seed of the head init, the random backbone init and the data order."""
    precision: str = option("auto", choices=PRECISIONS, deprecated=(_NO_BF16,))
    """auto or bf16: bf16 autocast on CUDA (the CPU always trains in fp32); fp32."""
    keep_last: int | None = option(2, metavar="N")
    """Keep only the N newest step checkpoints (0: all); OUT/best is never deleted."""
    skip_nonfinite: int = option(0, metavar="N")
    """Skip up to N batches whose loss or gradient norm is NaN/Inf (logged) instead of stopping at the first."""
    tensorboard: bool = option(True, flag="--no-tensorboard")
    """Do not write TensorBoard scalars to OUT/tb (they are written when tensorboard is installed)."""
    wandb: str | None = option(None, metavar="PROJECT")
    """Also log to this Weights & Biases project (needs ``pip install wandb``)."""
    save_interval: int = internal(200)
    """Also checkpoint every this many steps (0: only at epoch ends)."""
    log_interval: int = internal(10)
    """Steps between training-loss lines in metrics.jsonl."""

    def __post_init__(self) -> None:
        checks = {
            "epochs": self.epochs >= 1,
            "lr": self.lr > 0,
            "min-lr": 0 <= self.min_lr <= self.lr,
            "weight-decay": self.weight_decay >= 0,
            "warmup-steps": self.warmup_steps >= 0,
            "clip-grad": self.clip_grad >= 0,
            "global-batch-size": self.global_batch_size is None or self.global_batch_size >= 1,
            "micro-batch-size": self.micro_batch_size is None or self.micro_batch_size >= 1,
            "eval-batch-tokens": self.eval_batch_tokens is None or self.eval_batch_tokens >= 1,
            "max-length": self.max_length >= 2,
            "precision": self.precision in PRECISIONS,
            "save-interval": self.save_interval >= 0,
            "log-interval": self.log_interval >= 1,
            "keep-last": self.keep_last is None or self.keep_last >= 0,
            "skip-nonfinite": self.skip_nonfinite >= 0,
        }
        check_seed(self.seed)
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise LQSError(f"invalid --{bad[0]}: {getattr(self, bad[0].replace('-', '_'))}")

    @property
    def bf16(self) -> bool:
        """bf16 autocast on CUDA (``auto`` or ``bf16``)."""
        return self.precision != "fp32"

    def resolved(self, num_train: int, dp: int) -> TrainScorerConfig:
        """This config with ``global_batch_size`` set (the given one, or the default that fits ``num_train``) and
        ``keep_last`` 0 read as None (keep all)."""
        cfg = self if self.keep_last != 0 else dataclasses.replace(self, keep_last=None)
        if cfg.global_batch_size is not None:
            if num_train // cfg.global_batch_size == 0:
                raise LQSError(
                    f"--global-batch-size {cfg.global_batch_size} is larger than the training split "
                    f"({num_train} sequences); lower it (or leave it out: the default adapts to the split)"
                )
            return cfg
        b = DEFAULT_BATCH_SIZE
        while b > 1 and num_train // b < MIN_STEPS_PER_EPOCH:
            b //= 2
        b = max(dp, b - b % dp)
        return dataclasses.replace(cfg, global_batch_size=b)

    def micro_batch(self, dp: int) -> int:
        """Sequences per rank per forward/backward: ``--micro-batch-size``, or by default the largest
        divisor of ``global_batch_size / dp`` that is at most 16."""
        if self.global_batch_size % dp:
            raise LQSError(
                f"--global-batch-size {self.global_batch_size} is not a multiple of the {dp} data-parallel ranks"
            )
        if self.micro_batch_size is not None:
            return self.micro_batch_size
        per_rank = self.global_batch_size // dp
        return max(d for d in range(1, min(16, per_rank) + 1) if per_rank % d == 0)

    def accumulation(self, dp: int) -> int:
        """Micro-batches per rank per step; the global batch must split evenly."""
        mb = self.micro_batch(dp)
        per_step = dp * mb
        if self.global_batch_size % per_step:
            raise LQSError(
                f"--global-batch-size {self.global_batch_size} is not a multiple of data-parallel ranks x "
                f"--micro-batch-size ({dp} x {mb} = {per_step})"
            )
        return self.global_batch_size // per_step


@dataclass
class ScoreRun:
    """What ``lqs score`` scores with what (how it batches and runs: :class:`ScoreOptions`)."""

    scorer: str = option(metavar="CKPT_DIR")
    """train-scorer output (or its best/ directory)."""
    data: str = option(metavar="PREFIX")
    """Indexed dataset to score."""
    out: str = option(metavar="DIR")
    """Output directory."""
    tokenizer: str | None = None
    """The data's tokenizer, checked against the scorer's."""
    allow_tokenizer_mismatch: bool = False
    """Score --data whose recorded tokenizer differs from the scorer's anyway (a warning)."""
    device: str | None = option(None, choices=DEVICES)
    """cuda or cpu (default: cuda when available)."""
    progress: bool = option(True, flag="--no-progress", help="No progress bar.")
    """Show a progress bar."""
    shard: Shard | str | None = option(None, metavar="I/N")
    """Score sequences [I*n/N, (I+1)*n/N) only (whole --part-size units), into OUT.shard-IIIII-of-NNNNN; join
    with `lqs merge --shards OUT`. Default: from a Slurm job array (torchrun ranks stay data parallel within a
    shard); 'none': everything."""

    def __post_init__(self) -> None:
        if isinstance(self.shard, str):  # the library's text; the command line resolves --shard and Slurm's array
            self.shard = None if self.shard.strip().lower() == "none" else parse_shard(self.shard)
        if self.shard is not None and self.shard.count == 1:
            self.shard = None


@dataclass
class ScoreOptions:
    """How ``lqs score`` batches, cuts its work into parts and runs."""

    max_tokens: int | None = None
    """Token budget of a batch, rows x longest row, padding included (default: 4096 on the CPU, 32768 on CUDA)."""
    micro_batch_size: int = option(512, deprecated=("--max-batch-size",))
    """Most sequences in one forward pass per rank (fewer when --max-tokens binds)."""
    part_size: int = option(100_000, deprecated=("--shard-size",))
    """Sequences per part, the unit of restart (OUT/parts/part-XXXXX.npy): a rerun computes only the missing parts."""
    precision: str = option("auto", choices=PRECISIONS, deprecated=(_NO_BF16,))
    """auto or bf16: the backbone in bf16 on CUDA (the CPU always runs fp32); fp32."""
    compile: bool = False
    """torch.compile the scorer (CUDA)."""
    parquet: bool = False
    """Also write OUT/scores.parquet: index, document, score and the dataset's PREFIX.meta.jsonl fields."""

    def __post_init__(self) -> None:
        for name, flag in (("max_tokens", "max-tokens"), ("micro_batch_size", "micro-batch-size")):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise LQSError(f"--{flag} must be >= 1, got {getattr(self, name)}")
        if self.part_size < 1:
            raise LQSError(f"--part-size must be >= 1, got {self.part_size}")
        if self.precision not in PRECISIONS:
            raise LQSError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision}")

    @property
    def bf16(self) -> bool:
        """The backbone in bf16 on CUDA (``auto`` or ``bf16``)."""
        return self.precision != "fp32"
