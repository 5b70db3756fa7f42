"""Indexed dataset (+ scores) -> jsonl or parquet with the decoded text (DELT's ``bin2jsonl``).

One row per sequence, in dataset order::

    {"index": 0, "text": "...", "score": 0.73}

- ``index``: the sequence's position in the dataset given (for a proxy sample or a
  selection, map it back to the corpus with that dataset's ``PREFIX.indices.npy``);
- ``text``: the tokens decoded with the tokenizer. One trailing EOS (the one ``lqs
  tokenize`` appends to every document) is removed first, and the remaining special
  tokens (BOS, PAD, an EOS inside a chunk that spans documents) are skipped, as DELT's
  tool does (``skip_special_tokens=True``);
- ``score``: present only with a score file; it must have one finite score per sequence.
  jsonl: ``float32`` scores are written with the shortest decimal that reads back as the
  same ``float32`` (``0.3``, not ``0.30000001192092896``); parquet: a column of the score
  file's dtype.

The tokenizer is checked before anything is written: it must hold every token id of the
data (a smaller vocabulary would decode garbage), and when ``PREFIX.stats.json`` records
the dataset's tokenizer fingerprint (``lqs tokenize``/``retokenize`` do), it must match.

``fmt="parquet"`` (``--format parquet``, or an output named ``.parquet``) writes the same
columns (``index`` int64, ``text`` string, ``score``) in row groups of :data:`ROW_GROUP`
rows, counted from the dataset's first row. With a shard (:mod:`~lqs_megatron.data.preprocess.sharding`),
rows ``[a, b)`` of the dataset go to ``OUT.shard-IIIII-of-NNNNN.jsonl`` (or ``.parquet``)
with their global ``index``; :func:`merge_exports` joins the shards into exactly the file one
run writes (jsonl: the files back to back; parquet: the rows regrouped from the first).

The output is written through :func:`~lqs_megatron.utils.atomic.atomic_file` under the
output lock: a killed export leaves no file behind. Such a file is also what ``lqs select``
/ ``lqs order`` take as jsonl input (their ``--score-field`` defaults to ``score``).
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np

from lqs_megatron.data.datasets.indexed import IndexedDataset
from lqs_megatron.data.datasets.scores import check_scores, json_floats, read_scores
from lqs_megatron.data.datasets.view import open_dataset
from lqs_megatron.data.preprocess.sharding import Shard, shard_output, split_range
from lqs_megatron.errors import LQSError
from lqs_megatron.utils.atomic import atomic_file
from lqs_megatron.utils.lock import output_lock
from lqs_megatron.utils.progress import Progress

logger = logging.getLogger(__name__)

FORMATS = ("jsonl", "parquet")
ROW_GROUP = 16384
"""Rows per parquet row group (the last one holds the rest)."""


def export_format(out_path: str, fmt: str | None) -> str:
    """``fmt``, or the output's extension (``.parquet`` -> parquet, else jsonl)."""
    if fmt is None:
        return "parquet" if str(out_path).endswith(".parquet") else "jsonl"
    if fmt not in FORMATS:
        raise LQSError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return fmt


def check_tokenizer(ds: IndexedDataset, tokenizer_dir: str, tok, start: int, stop: int) -> None:
    """Refuse a tokenizer that cannot decode sequences ``[start, stop)`` of ``ds`` (see the module docstring)."""
    from lqs_megatron.data.tokenizers.fingerprint import dataset_tokenizer, fingerprint
    from lqs_megatron.data.tokenizers.tokenizer import vocab_size

    recorded = dataset_tokenizer(ds.prefix)
    if recorded is not None and recorded["fingerprint"] != fingerprint(tok):
        raise LQSError(
            f"{ds.prefix} was tokenized with {recorded.get('path', '?')} (fingerprint {recorded['fingerprint']}, "
            f"recorded in {ds.prefix}.stats.json), but --tokenizer {tokenizer_dir} is another tokenizer "
            f"(fingerprint {fingerprint(tok)}); decoding with it would give wrong text"
        )
    vocab = vocab_size(tok)
    top = max_token(ds, start, stop)
    if top >= vocab:
        raise LQSError(
            f"{ds.data_path} holds token id {top}, but --tokenizer {tokenizer_dir} has {vocab} ids: "
            "it is not the dataset's tokenizer"
        )


def max_token(ds: IndexedDataset, start: int, stop: int, chunk: int = 1 << 24) -> int:
    """The largest token id in sequences ``[start, stop)`` (-1 when they hold none), read in chunks."""
    if ds.is_view:  # its sequences lie apart in its source: read them in gathered blocks, never all at once
        from lqs_megatron.data.datasets.subset import gathered_bytes

        blocks = (b.view(ds.dtype) for b in gathered_bytes(ds, np.arange(start, stop)))
        return max((int(b.max()) for b in blocks if b.size), default=-1)
    tokens = ds.span(start, stop)
    top = -1
    for i in range(0, len(tokens), chunk):
        top = max(top, int(tokens[i : i + chunk].max()))
    return top


def export_jsonl(
    data_prefix: str | os.PathLike,
    tokenizer_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    scores: str | os.PathLike | np.ndarray | None = None,
    batch_size: int = 1024,
    fmt: str | None = None,
    shard: Shard | None = None,
) -> dict:
    """Write ``out_path`` (see the module docstring); returns ``{"path", "num_lines", "with_scores", "format"}``."""
    from lqs_megatron.data.tokenizers.tokenizer import load_tokenizer

    fmt = export_format(str(out_path), fmt)
    out = shard_output(out_path, shard)
    ds = open_dataset(data_prefix)
    n = len(ds)
    start, stop = split_range(n, shard)
    values = None
    is_path = isinstance(scores, (str, os.PathLike))
    if scores is not None:
        raw = read_scores(scores) if is_path else np.asarray(scores)
        check_scores(raw, n, name=str(scores) if is_path else "scores")
        values = raw[start:stop]
    if batch_size < 1:
        raise LQSError(f"batch_size must be >= 1, got {batch_size}")
    tok = load_tokenizer(str(tokenizer_dir))
    check_tokenizer(ds, str(tokenizer_dir), tok, start, stop)
    batches = _decoded(ds, tok, start, stop, batch_size)
    inputs = {"--data": data_prefix, "--tokenizer": tokenizer_dir, "--scores": scores if is_path else None}
    with output_lock(out, step="export-jsonl", inputs=inputs, kind="file"), atomic_file(out) as tmp:
        if fmt == "parquet":
            with ParquetRows(tmp, values.dtype if values is not None else None) as sink:
                for lo, texts in batches:
                    part = None if values is None else values[lo - start : lo - start + len(texts)]
                    sink.add(np.arange(lo, lo + len(texts), dtype=np.int64), texts, part)
        else:
            with open(tmp, "w", encoding="utf-8") as f:
                for lo, texts in batches:
                    floats = None if values is None else json_floats(values[lo - start : lo - start + len(texts)])
                    for j, text in enumerate(texts):
                        row = {"index": lo + j, "text": text}
                        if floats is not None:
                            row["score"] = floats[j]
                        f.write(json.dumps(row, ensure_ascii=False))
                        f.write("\n")
    logger.info("exported sequences [%d, %d) of %s -> %s", start, stop, data_prefix, out)
    return {"path": out, "num_lines": stop - start, "with_scores": values is not None, "format": fmt}


def _decoded(ds: IndexedDataset, tok, start: int, stop: int, batch_size: int):
    """``(first index, texts)`` for batches of sequences ``[start, stop)``, trailing EOS removed."""
    eos = tok.eos_token_id
    bar = Progress("export", unit="seq", total=stop - start)
    for lo in range(start, stop, batch_size):
        hi = min(lo + batch_size, stop)
        ids = []
        for i in range(lo, hi):
            seq = ds[i].tolist()
            if seq and seq[-1] == eos:
                seq = seq[:-1]
            ids.append(seq)
        yield lo, tok.batch_decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        bar.update(hi - lo)
    bar.close()


class ParquetRows:
    """A parquet file of ``index``, ``text`` (and ``score``) written in row groups of :data:`ROW_GROUP` rows."""

    def __init__(self, path, score_dtype=None, row_group: int | None = None):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.pa, self.row_group = pa, row_group or ROW_GROUP
        fields = [pa.field("index", pa.int64()), pa.field("text", pa.string())]
        if score_dtype is not None:
            fields.append(pa.field("score", pa.from_numpy_dtype(np.dtype(score_dtype))))
        self.schema = pa.schema(fields)
        self.writer = pq.ParquetWriter(str(path), self.schema)
        self._parts: list = []
        self._rows = 0

    def __enter__(self) -> ParquetRows:
        return self

    def add(self, index: np.ndarray, texts: list[str], scores: np.ndarray | None) -> None:
        cols = [self.pa.array(index, self.pa.int64()), self.pa.array(texts, self.pa.string())]
        if scores is not None:
            cols.append(self.pa.array(np.asarray(scores)))
        self.add_table(self.pa.Table.from_arrays(cols, schema=self.schema))

    def add_table(self, table) -> None:
        """Append rows (a table of this schema); full row groups are written as they fill."""
        self._parts.append(table)
        self._rows += table.num_rows
        while self._rows >= self.row_group:
            whole = self.pa.concat_tables(self._parts)
            self.writer.write_table(whole.slice(0, self.row_group), row_group_size=self.row_group)
            rest = whole.slice(self.row_group)
            self._parts, self._rows = [rest], rest.num_rows

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None and self._rows:
            self.writer.write_table(self.pa.concat_tables(self._parts), row_group_size=self.row_group)
        self.writer.close()
        return False


def merge_exports(out: str, shards: list[str]) -> dict:
    """Join ``export-jsonl`` shard files into ``out``: exactly the file one run writes."""
    from lqs_megatron.data.preprocess.sources import sniff

    kinds = {sniff(p).kind for p in shards}
    if kinds - {"jsonl", "parquet"} or len(kinds) > 1:
        raise LQSError(f"the shards of {out} are not all jsonl or all parquet exports ({sorted(kinds)})")
    rows = 0
    with output_lock(out, step="merge", kind="file"), atomic_file(out) as tmp:
        if kinds == {"parquet"}:
            import pyarrow.parquet as pq

            first = pq.ParquetFile(shards[0]).schema_arrow
            score = first.field("score").type.to_pandas_dtype() if "score" in first.names else None
            with ParquetRows(tmp, score) as sink:
                for p in shards:
                    pf = pq.ParquetFile(p)
                    if not pf.schema_arrow.equals(sink.schema):
                        raise LQSError(f"{p}: another export's columns ({pf.schema_arrow.names}); rerun that shard")
                    for g in range(pf.metadata.num_row_groups):
                        table = pf.read_row_group(g)
                        sink.add_table(table)
                        rows += table.num_rows
        else:
            with open(tmp, "wb") as f:
                for p in shards:
                    with open(p, "rb") as src:
                        while buf := src.read(1 << 22):
                            rows += buf.count(b"\n")
                            f.write(buf)
    logger.info("merged %d export shards -> %s", len(shards), out)
    return {"path": out, "num_lines": rows, "shards": len(shards), "format": kinds.pop()}
