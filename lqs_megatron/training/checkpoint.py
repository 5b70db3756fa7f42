"""Training checkpoints: the on-disk format, written atomically by all ranks together, checked before use.

::

    OUT/
      latest                          # one line: the newest complete step directory's name
      step_00000100/
        config.json                   # format, model config, padded vocab, tp (see CHECKPOINT_FORMAT)
        model-tp00-of-02.safetensors  # this tp rank's shard (one file per tp rank)
        optimizer-tp00-of-02.pt       # AdamW state of that shard: the plain optimizer's state_dict (also
                                      # with --distributed-optimizer, whose dp shards are gathered to write it)
        trainer.json                  # step, consumed samples, schedule, the run's settings
        rng-rank00000.pt              # torch / CUDA / numpy / python RNG of each rank
        tokenizer/                    # tokenizer files (export-hf writes them next to the model)
        checksums.json                # size and CRC-32 of every file above (utils/integrity.py)
      metrics.jsonl, loss.png, tb/    # logs (not part of a checkpoint)

:func:`save_step` is the one writer (``lqs pretrain`` and ``lqs train-scorer`` use it with
their own files): a step directory is written as ``step_X.tmp``, every rank's files are
checksummed, and the directory is renamed when every rank has finished; only then is
``latest`` replaced (atomic rename). A killed job leaves at worst a ``.tmp`` directory
(removed when the next run takes the output lock), never a directory that looks
complete; a failed write (full disk) removes it at once and fails on every rank. All
ranks write into the same directory, so multi-node runs need ``OUT`` on a shared
filesystem. ``keep_last`` rotates old step directories (never the one ``latest`` names).

Resharding: the files do not depend on dp, and a run resumes under another ``--tp`` (and so
another world size): :func:`load_training_state` merges the stored tp shards of the weights and
of AdamW's moments (``models/parallelize.py``'s split tables), fits the vocabulary padding and
keeps this rank's slice. Any reader of today's files reads them unchanged (``export-hf``,
``evaluate``, ``--init-from``), and older checkpoints resume as they are.

Loading validates first (:func:`validate_step_dir`: sizes, checksums, safetensors
headers, complete ``torch.save`` archives) and names the file on failure; weights with
NaN/Inf are refused. :func:`find_resume_dir` falls back to the newest step that validates.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from lqs_megatron.errors import LQSError
from lqs_megatron.models.parallelize import VOCAB_ROWS, fit_vocab_rows, merge_state_dicts, shard_state_dict
from lqs_megatron.parallel.dims import ParallelDims
from lqs_megatron.training.optim import optimizer_param_names, optimizer_state_for_save
from lqs_megatron.utils.atomic import atomic_file, save_json
from lqs_megatron.utils.checkpoint_format import (  # the format's read side, below models
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    LATEST,
    read_config,
    read_model_shard,
    shard_name,
    step_dir_name,
    step_dirs,
    step_of,
    validate_step_dir,
)
from lqs_megatron.utils.integrity import (
    CorruptFile,
    check_finite,
    digest_files,
    disk_errors,
    files_under,
    torch_load,
    write_manifest,
)

logger = logging.getLogger(__name__)


def rng_state() -> dict:
    """Every RNG a training step can draw from (torch CPU and CUDA, numpy, Python), for exact resume."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def model_state_for_save(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The decoder's tensors to store: tied output weight dropped (safetensors stores no aliases)."""
    sd = model.state_dict()
    if model.config.tie_word_embeddings:
        sd.pop("output.weight", None)
    return {k: v.detach().cpu().contiguous() for k, v in sd.items()}


def remove_leftovers(root: str | os.PathLike) -> None:
    """Delete ``step_X.tmp`` / ``step_X.old`` directories of killed runs (call it holding the output lock)."""
    root = Path(root)
    if root.is_dir():
        for p in root.iterdir():
            if p.is_dir() and (p.name.endswith(".tmp") or p.name.endswith(".old")) and p.name.startswith("step_"):
                logger.info("removing %s, left by an interrupted checkpoint", p)
                shutil.rmtree(p, ignore_errors=True)


def save_step(
    root: str | os.PathLike,
    step: int,
    dims: ParallelDims,
    write: Callable[[Path], list[str]],
    keep_last: int | None = None,
) -> Path:
    """Write ``root/step_X`` (collective: every rank calls it) and point ``latest`` at it.

    ``write(tmp)`` writes this rank's files into the temporary directory and returns their
    names (relative to it); they are checksummed into ``checksums.json``. A failure on any
    rank (e.g. a full disk: "no space left on ROOT") removes the temporary directory and
    raises on every rank; ``latest`` keeps naming the previous step. ``keep_last``: keep
    only this many step directories up to the new one (None: all)."""
    root = Path(root)
    final = root / step_dir_name(step)
    tmp = root / f"{final.name}.tmp"
    what = f"checkpoint {final.name}"
    try:
        with dims.all_or_none(), disk_errors(root, what):
            if dims.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
        with dims.all_or_none(), disk_errors(root, what):
            mine = digest_files(tmp, write(tmp))
        sums = dims.all_gather_object(mine)
        with dims.all_or_none(), disk_errors(root, what):
            if dims.is_main:
                write_manifest(tmp, {k: v for d in sums for k, v in d.items()})
                _publish(root, tmp, final)
                if keep_last is not None:
                    rotate(root, keep_last)
    except BaseException:
        if dims.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _publish(root: Path, tmp: Path, final: Path) -> None:
    if final.exists():  # the same step written again (a resumed run that fell back past it)
        old = root / f"{final.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(tmp, final)
    with atomic_file(root / LATEST) as t:
        t.write_text(final.name + "\n")


def rotate(root: str | os.PathLike, keep_last: int) -> list[str]:
    """Delete all but the ``keep_last`` newest step directories up to the one ``latest`` names (that one
    is always kept; newer ones, left by a run that fell back past them, are left alone). Returns the names deleted."""
    marker = Path(root) / LATEST
    newest = step_of(marker.read_text().strip()) if marker.is_file() else None
    if newest is None or keep_last < 1:
        return []
    older = [p for p in step_dirs(root) if step_of(p.name) < newest]
    gone = older[max(keep_last - 1, 0) :]
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    if gone:
        logger.info("--keep-last %d: removed %s", keep_last, ", ".join(p.name for p in gone))
    return [p.name for p in gone]


def find_resume_dir(
    root: str | os.PathLike, crc: bool = True, validate: Callable[[Path, bool], object] = validate_step_dir
) -> tuple[Path | None, list[str]]:
    """``(step_dir, skipped)``: the newest step directory up to the one ``latest`` names that validates,
    and one line per newer one skipped (why). ``(None, [])`` when ``root`` has no ``latest``.
    Raises :class:`LQSError` listing every failure when none validates."""
    root = Path(root)
    marker = root / LATEST
    if not marker.is_file():
        return None, []
    named = marker.read_text().strip()
    newest = step_of(named)
    if newest is None:
        raise CorruptFile(marker, f"names {named!r}, not a step directory")
    skipped = []
    if not (root / named).is_dir():
        skipped.append(f"{named}: missing (named by {marker})")
    for d in step_dirs(root):
        if step_of(d.name) > newest:
            continue
        try:
            validate(d, crc)
            return d, skipped
        except LQSError as e:
            skipped.append(f"{d.name}: {e}")
    raise LQSError(f"no checkpoint under {root} validates: " + "; ".join(skipped))


def save_checkpoint(
    root: str | os.PathLike,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    dims: ParallelDims,
    meta: dict,
    trainer_state: dict,
    tokenizer=None,
    keep_last: int | None = None,
    extra_shards: dict | None = None,
) -> Path:
    """Write ``root/step_X`` of a pretraining run (collective) and point ``latest`` at it.

    ``tokenizer``: a transformers tokenizer saved into ``tokenizer/`` (for ``export-hf``).
    ``extra_shards``: ``{kind: object}`` of this tp rank, saved as ``KIND-tpXX-of-YY.pt`` by its dp rank 0
    (online selection's cached target gradient; :func:`load_extra_shard` reads it).
    Weights holding NaN/Inf are refused (nothing is written)."""
    from safetensors.torch import save_file

    opt_state = optimizer_state_for_save(optimizer, dims)  # collective for the distributed optimizer

    def write(tmp: Path) -> list[str]:
        tp, tpr = dims.tp, dims.tp_rank
        names = []
        if dims.dp_rank == 0:
            sd = model_state_for_save(model)
            check_finite(sd, f"refusing to write {tmp.name.removesuffix('.tmp')} (tp rank {tpr})")
            names += [shard_name("model", tpr, tp, "safetensors"), shard_name("optimizer", tpr, tp, "pt")]
            save_file(sd, tmp / names[0], {"format": "pt"})
            torch.save(opt_state, tmp / names[1])
            for kind, obj in (extra_shards or {}).items():
                names.append(shard_name(kind, tpr, tp, "pt"))
                torch.save(obj, tmp / names[-1])
        names.append(f"rng-rank{dims.rank:05d}.pt")
        torch.save(rng_state(), tmp / names[-1])
        if dims.is_main:
            save_json(tmp / "config.json", {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **meta})
            save_json(tmp / "trainer.json", trainer_state)
            names += ["config.json", "trainer.json"]
            if tokenizer is not None:
                from lqs_megatron.models.hf import save_tokenizer  # loadable by transformers 4.x and 5.x

                save_tokenizer(tokenizer, tmp / "tokenizer")
                names += [f"tokenizer/{n}" for n in files_under(tmp / "tokenizer")]
        return names

    return save_step(root, step, dims, write, keep_last)


def load_training_state(
    step_dir: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer, dims: ParallelDims
) -> dict:
    """Restore model shard, optimizer and this rank's RNG from ``step_dir``; return ``trainer.json``.

    A checkpoint of another ``--tp`` or vocabulary padding is resharded (merged, fitted, sliced);
    the data-parallel size may change freely. Every file is validated as it is read (a failure names it)."""
    step_dir = Path(step_dir)
    meta = read_config(step_dir)
    trainer = json.loads((step_dir / "trainer.json").read_text())
    if meta["model"]["vocab_size"] != model.config.vocab_size:  # resharding would fit the rows silently
        raise LQSError(
            f"{step_dir} holds another model than this run's (vocabulary {meta['model']['vocab_size']}, "
            f"this run's {model.config.vocab_size})"
        )
    if meta["tp"] == dims.tp and meta["padded_vocab_size"] == model.padded_vocab_size:
        sd = read_model_shard(step_dir, dims.tp_rank, dims.tp)
        opt_sd = torch_load(step_dir / shard_name("optimizer", dims.tp_rank, dims.tp, "pt"), map_location="cpu")
    else:
        logger.info("resharding %s from tp %d to tp %d", step_dir, meta["tp"], dims.tp)
        sd, opt_sd = _resharded(step_dir, meta["tp"], model, dims)
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
        optimizer.load_state_dict(opt_sd)
    except (RuntimeError, ValueError) as e:  # shapes or parameter counts of another model
        first = str(e).strip().splitlines()[-1].strip()
        raise LQSError(f"{step_dir} holds another model than this run's ({first})") from None
    missing = [m for m in missing if not (model.config.tie_word_embeddings and m == "output.weight")]
    if missing or unexpected:
        raise LQSError(f"{step_dir}: model shard does not match (missing {missing[:5]}, unexpected {unexpected[:5]})")
    # the RNG of the same rank; in another world size every rank takes rank 0's (no step draws from it today)
    rank = dims.rank if trainer.get("world_size", dims.world_size) == dims.world_size else 0
    rng = step_dir / f"rng-rank{rank:05d}.pt"
    if rng.is_file():
        set_rng_state(torch_load(rng))
    return trainer


def load_extra_shard(step_dir: str | os.PathLike, kind: str, dims: ParallelDims):
    """This tp rank's ``KIND-tpXX-of-YY.pt`` of ``step_dir`` (see :func:`save_checkpoint`); None when the step
    has none or was written at another tp (such state is per shard and not resharded)."""
    step_dir = Path(step_dir)
    path = step_dir / shard_name(kind, dims.tp_rank, dims.tp, "pt")
    if read_config(step_dir)["tp"] != dims.tp or not path.is_file():
        return None
    return torch_load(path, map_location=dims.device)


def _resharded(step_dir: Path, tp: int, model: torch.nn.Module, dims: ParallelDims) -> tuple[dict, dict]:
    """``(model shard, optimizer state dict)`` of this rank from a checkpoint written with ``tp`` ranks:
    each weight and each AdamW moment merged over the stored shards (split like its parameter), its
    vocabulary rows fitted to this model's padding, and sliced for ``dims``."""
    vocab, rows = model.config.vocab_size, model.padded_vocab_size

    def reshard(full: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        full = {k: fit_vocab_rows(v, vocab, rows) if k in VOCAB_ROWS else v for k, v in full.items()}
        return {k: v.clone() for k, v in shard_state_dict(full, dims.tp, dims.tp_rank).items()}  # no views

    sd = reshard(merge_state_dicts([read_model_shard(step_dir, r, tp) for r in range(tp)]))
    opts = [torch_load(step_dir / shard_name("optimizer", r, tp, "pt"), map_location="cpu") for r in range(tp)]
    names = optimizer_param_names(model)
    n_stored = sum(len(g["params"]) for g in opts[0]["param_groups"])
    if n_stored != len(names):
        raise LQSError(f"{step_dir}: the optimizer state holds {n_stored} parameters, the model {len(names)}")
    by_name = [{names[int(i)]: st for i, st in o["state"].items()} for o in opts]  # indices follow the groups
    state = {}
    for i, name in enumerate(names):
        if name not in by_name[0]:
            continue  # no update yet
        st = dict(by_name[0][name])
        for key, v in st.items():
            if torch.is_tensor(v) and v.ndim > 0:  # the moments: shaped like the parameter's shard
                st[key] = reshard(merge_state_dicts([{name: o[name][key]} for o in by_name]))[name]
        state[i] = st
    return sd, {"state": state, "param_groups": opts[0]["param_groups"]}
