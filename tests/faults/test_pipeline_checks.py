"""The pipeline checks every step's values before step 1 (issue 24): a value a step refuses fails at load
time with the YAML file and key, through the step's own dataclass checks; a YAML mapping that repeats a key
is refused with file, line and key, in every YAML the project reads (pipeline, demo override, model config)."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from lqs_megatron.errors import LQSError
from lqs_megatron.pipeline.config import config_from_dict, load_config
from tests.utils import run_lqs


def _minimal() -> dict:
    return {"workdir": "run", "data": {"corpus": ["c.jsonl"], "target": "t.jsonl"}}


def _rng():
    return np.random.default_rng()  # fresh entropy


def bad_selection(case: str) -> tuple[dict, str]:
    """A selection section a step refuses, with fresh random values (drawn in the test, so that the test
    ids stay the same for every pytest-xdist worker), and the message expected."""
    rng = _rng()
    r = float(rng.uniform(1.01, 5.0))
    k = -int(rng.integers(1, 1000))
    return {
        "r_high": ({"r": r}, rf"selection\.r: --r must be in \[0, 1\], got {r}"),
        "r_low": ({"r": -r}, r"selection\.r: --r must be in \[0, 1\]"),
        "k_negative": ({"method": "top-k", "k": k}, rf"selection\.k: --k must be an integer >= 0, got {k}"),
        "layers_zero": ({"layers": 0}, r"selection\.layers: --layers must be an integer >= 1"),
        "baseline_seed_negative": (  # the random baseline's pick and shuffle take selection.seed
            {"seed": k},
            rf"selection\.seed: --seed must be an integer in \[0, 2\*\*63 - 1\], got {k}",
        ),
        "seed_negative": (
            {"order": "shuffle", "seed": k},
            rf"selection\.seed: --seed must be an integer in \[0, 2\*\*63 - 1\], got {k}",
        ),
    }[case]


@pytest.mark.parametrize(
    "case", ["r_high", "r_low", "k_negative", "layers_zero", "seed_negative", "baseline_seed_negative"]
)
def test_selection_values_are_checked_at_load_time(tmp_path, case):
    patch, match = bad_selection(case)
    with pytest.raises(LQSError, match=match):
        config_from_dict({**_minimal(), "selection": patch}, tmp_path, where="p.yaml")


def test_other_sections_name_their_key(tmp_path):
    seed = -int(_rng().integers(1, 10**6))
    with pytest.raises(LQSError, match=rf"p\.yaml: proxy\.seed: --seed must be an integer .*got {seed}"):
        config_from_dict({**_minimal(), "proxy": {"seed": seed}}, tmp_path, where="p.yaml")
    with pytest.raises(LQSError, match=r"p\.yaml: annotate\.global_batch_size: --global-batch-size must be >= 1"):
        config_from_dict({**_minimal(), "annotate": {"global_batch_size": 0}}, tmp_path, where="p.yaml")
    with pytest.raises(LQSError, match=rf"p\.yaml: scorer\.valid_num: --valid-num must be >= 1, got {seed}"):
        config_from_dict({**_minimal(), "scorer": {"valid_num": seed}}, tmp_path, where="p.yaml")


def test_good_selection_values_pass(tmp_path):
    rng = _rng()
    r = float(rng.uniform(0, 1))
    cfg = config_from_dict({**_minimal(), "selection": {"r": r, "layers": int(rng.integers(1, 9))}}, tmp_path)
    assert cfg.selection.r == r


def test_pipeline_fails_before_step_one(tmp_path):
    cfg = {**_minimal(), "selection": {"r": 1.5}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg))
    proc = run_lqs("pipeline", "--config", tmp_path / "p.yaml", check=False)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert f"{tmp_path / 'p.yaml'}: selection.r: --r must be in [0, 1], got 1.5" in proc.stderr
    assert not (tmp_path / "run").exists()  # no step ran, nothing was written


DUPLICATE = """\
workdir: run
data:
  corpus: [c.jsonl]
  target: t.jsonl
selection:
  r: 0.25
  method: top-r
  r: 0.75
"""


def test_duplicate_pipeline_key_names_file_line_and_key(tmp_path):
    (tmp_path / "p.yaml").write_text(DUPLICATE)
    with pytest.raises(LQSError) as e:
        load_config(tmp_path / "p.yaml")
    assert str(e.value).startswith(f"{tmp_path / 'p.yaml'}:8: duplicate key 'r' (first at line 6)")
    proc = run_lqs("pipeline", "--config", tmp_path / "p.yaml", check=False)
    assert proc.returncode == 1 and f"{tmp_path / 'p.yaml'}:8: duplicate key 'r'" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_duplicate_top_level_key_and_demo_override(tmp_path):
    from lqs_megatron.pipeline.demo import load_override

    (tmp_path / "o.yaml").write_text("proxy:\n  num: 10\nproxy:\n  seed: 3\n")
    with pytest.raises(LQSError, match=r"o\.yaml:3: duplicate key 'proxy' \(first at line 1\)"):
        load_override(str(tmp_path / "o.yaml"))
    (tmp_path / "f.yaml").write_text("workdir: run\nproxy: {num: 10, num: 20}\n")  # one line, flow style
    with pytest.raises(LQSError, match=r"f\.yaml:2: duplicate key 'num' \(first at line 2\)"):
        load_config(tmp_path / "f.yaml")


def test_duplicate_model_config_key(tmp_path):
    from lqs_megatron.models.config import load_model_config

    (tmp_path / "m.yaml").write_text("hidden_size: 32\nnum_heads: 2\nhidden_size: 64\n")
    with pytest.raises(LQSError, match=r"m\.yaml:3: duplicate key 'hidden_size' \(first at line 1\)"):
        load_model_config(tmp_path / "m.yaml")
    (tmp_path / "ok.yaml").write_text("hidden_size: 32\nnum_heads: 2\nintermediate_size: 64\n")
    assert load_model_config(tmp_path / "ok.yaml").hidden_size == 32
