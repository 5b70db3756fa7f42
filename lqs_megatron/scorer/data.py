"""The scorer's training data: normalised proxy scores, split into train and valid (``lqs prepare-scorer-data``).

Input: the proxy dataset (``PREFIX.bin/.idx``, the sequences ``lqs annotate`` scored)
and its scores (``FILE.npy``, one finite number per proxy sequence, proxy order).
Output, a directory written atomically (everything goes into a temporary directory that
is renamed into place at the end, so a killed or failed run leaves nothing that looks
finished)::

    DIR/train.bin, train.idx      training sequences (proxy order), each its own document
    DIR/train_scores.npy          float32 normalised scores, aligned with train
    DIR/train_indices.npy         int64 position of each training sequence in the proxy set
    DIR/valid.bin, valid.idx, valid_scores.npy, valid_indices.npy   the same for validation
    DIR/scores.png                sorted normalised scores and their histogram
    DIR/stats.json                counts, raw mean/std, clipped count, tokenizer, arguments

Normalisation (always applied, also to scores that are already normalised, so the
scorer's target is defined by this file alone): ``z = clip((s - mean(s)) / std(s), -3, 3)``
with the population standard deviation over the whole proxy set (before the split);
all zeros when the standard deviation is 0. Re-normalising already-normalised scores
changes them only where the earlier clipping moved the mean or std (a tiny shift).

Split: ``numpy.random.default_rng(seed).permutation(N)``; its first ``valid_num``
positions are the validation set, the rest training; both are stored in proxy order.

Retokenization: when ``--src-tokenizer`` and ``--dst-tokenizer`` differ, every proxy
sequence is decoded with the source tokenizer and re-encoded with the scorer's
(``lqs_megatron.data.preprocess.retokenize``, the same function as ``lqs retokenize``) before the
split; scores stay aligned because retokenization keeps one sequence per sequence.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lqs_megatron.data.datasets.indexed import IndexedDataset, dataset_exists
from lqs_megatron.data.datasets.scores import CLIP, flat_scores, flat_scores_message, load_scores, normalize_scores
from lqs_megatron.data.datasets.subset import write_subset
from lqs_megatron.data.datasets.view import open_dataset
from lqs_megatron.errors import LQSError
from lqs_megatron.lqs.report import report_if_sidecar
from lqs_megatron.scorer.config import PrepareScorerConfig
from lqs_megatron.utils.atomic import atomic_dir, save_json, save_npy
from lqs_megatron.utils.lock import output_lock

logger = logging.getLogger(__name__)

OUTPUT_FILES = (
    "train.bin",
    "train.idx",
    "valid.bin",
    "valid.idx",
    "*_scores.npy",
    "*_indices.npy",
    "scores.png",
    "stats.json",
    "report.*",
)
"""The entries of an output directory (how one written before the marker existed is recognised)."""

SPLITS = ("train", "valid")


def default_valid_num(n: int) -> int:
    """10% of the proxy set, at least 1 (PDS/DELT: 16,384 of 163,840)."""
    return max(1, n // 10)


def split_indices(n: int, valid_num: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train, valid)`` proxy positions, each ascending int64 (see the module docstring)."""
    if n < 2:
        raise LQSError(f"the proxy set has {n} sequence(s); a train/valid split needs at least 2")
    if not 1 <= valid_num < n:
        raise LQSError(f"--valid-num must be in [1, {n - 1}] for a proxy set of {n} sequences, got {valid_num}")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[valid_num:]).astype(np.int64), np.sort(perm[:valid_num]).astype(np.int64)


def plot_scores(z: np.ndarray, path: str | os.PathLike, title: str = "") -> None:
    """PNG of the sorted normalised scores (left) and their histogram (right); matplotlib's Agg backend."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(np.sort(z), lw=1.2)
    a.set_xlabel("rank")
    a.set_ylabel("normalised score")
    a.set_title("sorted scores")
    a.grid(alpha=0.3)
    b.hist(z, bins=min(100, max(10, len(z) // 20)), color="tab:orange")
    b.set_xlabel("normalised score")
    b.set_ylabel("count")
    b.set_title("histogram")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _check_sequences(ds: IndexedDataset) -> None:
    if len(ds) == 0:
        raise LQSError(f"proxy dataset {ds.prefix!r} is empty: nothing to train a scorer on")
    empty = np.flatnonzero(ds.sequence_lengths == 0)
    if empty.size:
        raise LQSError(f"proxy dataset {ds.prefix!r}: sequence {int(empty[0])} is empty ({empty.size} empty in all)")


def _retokenized(proxy, src_tokenizer: str, dst_tokenizer: str, tmp: Path, workers: int | None, n: int):
    """The proxy sequences re-encoded with the scorer's tokenizer, in ``tmp/proxy`` (one sequence per sequence)."""
    from lqs_megatron.data.preprocess.retokenize import RetokenizeConfig, retokenize

    logger.info("retokenizing %d proxy sequences: %s -> %s", n, src_tokenizer, dst_tokenizer)
    retokenize(RetokenizeConfig(str(proxy), src_tokenizer, dst_tokenizer, str(tmp / "proxy"), workers=workers))
    source = IndexedDataset(tmp / "proxy")
    if len(source) != n:
        raise LQSError(f"retokenization changed the number of sequences ({n} -> {len(source)})")
    _check_sequences(source)
    return source


def prepare_scorer_data(cfg: PrepareScorerConfig, args: dict | None = None) -> dict:
    """Write the scorer's train/valid data to ``cfg.out`` (see the module docstring); return the stats.

    ``cfg.workers``: retokenization processes (None: one per core, 0: in this process). ``args``: the command
    line, recorded in ``stats.json``. Scores that are
    constant or nearly so (:func:`lqs_megatron.data.datasets.scores.flat_scores`) are refused unless
    ``cfg.allow_constant_scores``. The output rule applies
    (:func:`~lqs_megatron.utils.lock.output_lock`): ``cfg.out`` replaces only an earlier output of this command.
    """
    inputs = {
        "--proxy": cfg.proxy,
        "--scores": cfg.scores,
        "--src-tokenizer": cfg.src_tokenizer,
        "--dst-tokenizer": cfg.dst_tokenizer,
    }
    with output_lock(cfg.out, step="prepare-scorer-data", inputs=inputs, kind="dir", known=OUTPUT_FILES):
        return _prepare(cfg, args)


def _prepare(cfg: PrepareScorerConfig, args: dict | None) -> dict:
    from lqs_megatron.data.tokenizers.fingerprint import dataset_tokenizer, tokenizer_info

    if (cfg.src_tokenizer is None) != (cfg.dst_tokenizer is None):
        raise LQSError("--src-tokenizer and --dst-tokenizer go together (give both or neither)")
    t0 = time.time()
    ds = open_dataset(cfg.proxy)  # a dataset or a view
    _check_sequences(ds)
    raw = load_scores(cfg.scores, expected_len=len(ds))
    flat = flat_scores(raw)
    if flat is not None:
        msg = flat_scores_message(cfg.scores, flat)
        if not cfg.allow_constant_scores:
            raise LQSError(msg + ", or pass --allow-constant-scores")
        logger.warning(msg)
    n = len(ds)
    valid_num = default_valid_num(n) if cfg.valid_num is None else cfg.valid_num
    train_idx, valid_idx = split_indices(n, valid_num, cfg.seed)
    z = normalize_scores(raw)
    std = float(raw.std())

    tok_info = None
    retokenized = False
    if cfg.src_tokenizer is not None:
        src, dst = tokenizer_info(cfg.src_tokenizer), tokenizer_info(cfg.dst_tokenizer)
        retokenized = src["fingerprint"] != dst["fingerprint"]
        tok_info = dst
    else:
        tok_info = dataset_tokenizer(cfg.proxy)

    out_dir = Path(cfg.out)
    with atomic_dir(out_dir, command="prepare-scorer-data") as tmp:
        source = (
            _retokenized(cfg.proxy, cfg.src_tokenizer, cfg.dst_tokenizer, tmp, cfg.workers, n) if retokenized else ds
        )
        counts = {}
        for name, idx in zip(SPLITS, (train_idx, valid_idx)):
            counts[f"{name}_tokens"] = write_subset(source, idx, tmp / name)
            save_npy(tmp / f"{name}_scores.npy", z[idx].astype(np.float32))
            save_npy(tmp / f"{name}_indices.npy", idx)
        if retokenized:
            for name in ("proxy.bin", "proxy.idx", "proxy.stats.json"):
                (tmp / name).unlink(missing_ok=True)
        clipped = int(np.count_nonzero(np.abs((raw - raw.mean()) / std) > CLIP)) if std > 0 else 0
        plot_scores(
            z, tmp / "scores.png", title=f"{Path(str(cfg.scores)).name}: {n} scores, {clipped} clipped at ±{CLIP:g}"
        )
        stats = {
            "num_sequences": n,
            "num_train": len(train_idx),
            "num_valid": len(valid_idx),
            **counts,
            "raw_mean": float(raw.mean()),
            "raw_std": std,
            "raw_min": float(raw.min()),
            "raw_max": float(raw.max()),
            "scores_flat": flat,
            "clip": CLIP,
            "clipped": clipped,
            "normalised_mean": float(z.mean()),
            "normalised_std": float(z.std()),
            "retokenized": retokenized,
            "tokenizer": tok_info,
            "proxy": str(cfg.proxy),
            "scores": str(cfg.scores),
            "seed": cfg.seed,
            "valid_num": valid_num,
            "args": args or {},
            "seconds": round(time.time() - t0, 3),
        }
        save_json(tmp / "stats.json", stats)
        # where the scores come from, when the proxy set carries a provenance sidecar (lqs/report.py)
        text_tok = cfg.src_tokenizer if cfg.src_tokenizer is not None else (tok_info or {}).get("path")
        report_if_sidecar(tmp / "report", raw, str(cfg.proxy), tokenizer=text_tok)
    logger.info(
        "scorer data: %d train + %d valid sequences, %d scores clipped -> %s",
        len(train_idx),
        len(valid_idx),
        clipped,
        out_dir,
    )
    return stats


@dataclass
class ScorerSplit:
    """One split of the scorer's data: the sequences and their normalised scores."""

    data: IndexedDataset
    scores: np.ndarray


def load_split(data_dir: str | os.PathLike, split: str) -> ScorerSplit:
    """``DIR/<split>.bin/.idx`` and ``DIR/<split>_scores.npy``, checked against each other."""
    d = Path(data_dir)
    prefix = d / split
    if not dataset_exists(prefix):
        raise LQSError(f"{d}: no {split}.bin/.idx; is this a directory written by `lqs prepare-scorer-data`?")
    ds = IndexedDataset(prefix)
    scores = load_scores(d / f"{split}_scores.npy", expected_len=len(ds)).astype(np.float32)
    if len(ds) == 0:
        raise LQSError(f"{prefix}: the {split} split is empty")
    return ScorerSplit(ds, scores)


def load_stats(data_dir: str | os.PathLike) -> dict:
    """``DIR/stats.json`` ({} when absent)."""
    import json

    p = Path(data_dir) / "stats.json"
    return json.loads(p.read_text()) if p.is_file() else {}
