"""data/datasets/meta.py: the PREFIX.meta.jsonl sidecar follows sequences through subsets and merges."""

from __future__ import annotations

import numpy as np
import pytest

from lqs_megatron.data.datasets.indexed import IndexedDataset, IndexedDatasetWriter
from lqs_megatron.data.datasets.meta import concat_meta, meta_line, meta_path, read_meta, subset_meta, write_meta
from lqs_megatron.data.datasets.subset import write_subset_with_sidecars
from lqs_megatron.errors import InputError, LQSError


def _dataset(prefix, n, rng):
    with IndexedDatasetWriter(str(prefix), dtype=np.uint16) as b:
        for _ in range(n):
            b.add_document(rng.integers(0, 1000, rng.integers(1, 9)))
    return IndexedDataset(str(prefix))


def _meta(n, rng):
    return [{"source": f"s{rng.integers(0, 3)}", "url": f"https://x/{i}/é"} for i in range(n)]


def test_subset_carries_the_lines_of_the_chosen_sequences(tmp_path):
    rng = np.random.default_rng(0)
    ds = _dataset(tmp_path / "c", 23, rng)
    rows = _meta(23, rng)
    write_meta(tmp_path / "c", (meta_line(r, ["source", "url"]) for r in rows))
    idx = rng.permutation(23)[:11]
    write_subset_with_sidecars(ds, idx, tmp_path / "s", {"indices": idx})
    assert read_meta(tmp_path / "s", expected=11) == [rows[i] for i in idx]


def test_subset_without_source_sidecar_removes_a_stale_one(tmp_path):
    rng = np.random.default_rng(1)
    ds = _dataset(tmp_path / "c", 5, rng)
    write_meta(tmp_path / "s", [{"a": 1}])
    write_subset_with_sidecars(ds, [0, 2], tmp_path / "s", {})
    assert read_meta(tmp_path / "s") is None


def test_misaligned_sidecar_is_an_error(tmp_path):
    rng = np.random.default_rng(2)
    _dataset(tmp_path / "c", 4, rng)
    write_meta(tmp_path / "c", _meta(3, rng))
    with pytest.raises(LQSError, match="3 lines but the dataset has 4"):
        subset_meta(tmp_path / "c", [0], tmp_path / "s", 4)
    with pytest.raises(LQSError, match="3 lines"):
        read_meta(tmp_path / "c", expected=4)


def test_concat_in_order_and_all_or_none(tmp_path):
    rng = np.random.default_rng(3)
    a, b = _meta(3, rng), _meta(4, rng)
    write_meta(tmp_path / "a", a)
    write_meta(tmp_path / "b", b)
    assert concat_meta([str(tmp_path / "a"), str(tmp_path / "b")], [3, 4], tmp_path / "m")
    assert read_meta(tmp_path / "m") == a + b
    assert not concat_meta([str(tmp_path / "x"), str(tmp_path / "y")], [1, 1], tmp_path / "n")
    with pytest.raises(LQSError, match="keep all or none"):
        concat_meta([str(tmp_path / "a"), str(tmp_path / "y")], [3, 1], tmp_path / "n")


def test_bad_line_names_file_and_line(tmp_path):
    with open(meta_path(tmp_path / "p"), "w") as f:
        f.write('{"a": 1}\n[1]\n')
    with pytest.raises(InputError, match=r"p\.meta\.jsonl:2: expected a JSON object"):
        read_meta(tmp_path / "p")


def test_missing_fields_are_null_and_order_is_kept():
    assert meta_line({"url": "u", "x": 1}, ["source", "url"]) == b'{"source":null,"url":"u"}\n'
