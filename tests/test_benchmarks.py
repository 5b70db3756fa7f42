"""The benchmarks cannot rot between GPU sessions: every script starts (``--help``) when run directly
as ``python benchmarks/X.py`` (the way users run them; every script is named ``bench_*.py``, so none can
shadow a standard-library module), and every one runs at a tiny size: the GPU-path ones through
``scripts/gpu_check.sh --dry-run`` (the same steps the GPU check runs, on the CPU), the others here
with their ``--tiny`` flag (a script without one is reported, not run), ``bench_tokenize.py`` in
``tests/data/test_tokenize_benchmark.py`` (which also checks its table)."""

import glob
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from tests.utils import REPO

GPU_CHECK = os.path.join(REPO, "scripts", "gpu_check.sh")
# the shared harness (run by every script); bench_quality.py's corpus builder (run by bench_quality.py --tiny)
NOT_BENCHMARKS = {"_harness.py", "quality_corpus.py"}
# no GPU figure: tiny runs here
CPU_ONLY = [
    "bench_checkpoint.py",
    "bench_curate.py",
    "bench_tokenize_scale.py",
    "bench_quality.py",
    "bench_threads.py",
]
TINY_ELSEWHERE = {"bench_tokenize.py": "tests/data/test_tokenize_benchmark.py"}


def _scripts() -> list[str]:
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(REPO, "benchmarks", "*.py")))


def _gpu_check_scripts() -> set[str]:
    text = open(GPU_CHECK).read()
    return set(re.findall(r"benchmarks/(\w+\.py)", text)) | set(re.findall(r"\$B/(\w+\.py)", text))


def test_benchmark_scripts_start():
    scripts = [os.path.join(REPO, "benchmarks", s) for s in _scripts() if s not in NOT_BENCHMARKS]
    assert len(scripts) >= 7
    procs = {
        p: subprocess.Popen(
            [sys.executable, p, "--help"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for p in scripts
    }
    failed = {}
    for p, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        if proc.returncode != 0 or "usage" not in out:
            failed[os.path.basename(p)] = err[-500:]
    assert not failed, failed


def test_every_benchmark_has_a_tiny_run():
    """A benchmark added later must join the GPU check or the CPU-only tiny runs below."""
    covered = _gpu_check_scripts() | set(CPU_ONLY) | set(TINY_ELSEWHERE) | NOT_BENCHMARKS
    assert all(os.path.exists(os.path.join(REPO, t)) for t in TINY_ELSEWHERE.values())
    assert not set(_scripts()) - covered, f"benchmarks without a tiny run: {sorted(set(_scripts()) - covered)}"


def test_make_bench_runs_every_benchmark():
    """``make bench`` names every benchmark (bench_quality.py with its work directory), and nothing else."""
    text = open(os.path.join(REPO, "Makefile")).read().replace("\\\n", " ")
    listed = {f"{b}.py" for b in re.search(r"^BENCHMARKS = (.*)$", text, re.M).group(1).split()}
    assert "python benchmarks/bench_quality.py --work" in text
    assert listed | {"bench_quality.py", "gpu_table.py"} | NOT_BENCHMARKS == set(_scripts()), sorted(listed)


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path):
    """``scripts/gpu_check.sh --dry-run``: every part succeeds and every figure of the table is measured."""
    env = {**os.environ, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(
        ["bash", GPU_CHECK, "--dry-run"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    logs = {p.name: p.read_text()[-1500:] for p in (tmp_path / "logs").glob("*.log")}
    assert proc.returncode == 0, (proc.stdout[-3000:], logs)
    table = (tmp_path / "table.md").read_text()
    missing = [line for line in table.splitlines() if "missing" in line]
    assert "DRY RUN" in table and all("skipped: dry run" in line for line in missing), table
    status = (tmp_path / "status.tsv").read_text().splitlines()
    assert len(status) >= 8 and all("\tok\t" in s or "\tskipped: dry run\t" in s for s in status), status
    assert sum("\tok\t" in s for s in status) >= 8, status


@pytest.mark.slow
@pytest.mark.parametrize("script", CPU_ONLY)
def test_cpu_benchmark_tiny(script, tmp_path):
    path = os.path.join(REPO, "benchmarks", script)
    if script == "bench_quality.py":
        sys.path.insert(0, os.path.join(REPO, "benchmarks"))
        try:
            from quality_corpus import PACKAGES, sources
        finally:
            sys.path.pop(0)
        if not all(paths for paths, _ in sources().values()):
            pytest.skip(f"bench_quality.py reads Debian documentation: apt-get install {' '.join(PACKAGES)}")
    # its steps: one thread each; one seed keeps the smoke test at 46 steps (the seeds' plan: test_quality_order_arms)
    extra = ["--threads", "1", "--seeds", "1"] if script == "bench_quality.py" else []
    proc = subprocess.run(
        [sys.executable, path, "--tiny", *extra],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_quality_order_arms(tmp_path):
    """bench_quality.py's scored arms (stair, saw and folding+jitter beside folding, docs/quality.md) are ``lqs order``
    command lines the CLI accepts, on the LQS half, each pretrained (once per seed, with its target-holdout curve)
    and evaluated; FULL takes the arms' path (``order --method shuffle``, stored order) beside the old one
    (``pretrain --shuffle``); the annotation-model study has its own annotation model, scorer and arms."""
    from lqs_megatron.cli import build_parser
    from lqs_megatron.cli.options import build
    from lqs_megatron.curate.config import ORDER_PARAMS, OrderConfig
    from lqs_megatron.curate.ordering import check_params
    from lqs_megatron.training.config import PretrainConfig

    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    try:
        import bench_quality as quality
    finally:
        sys.path.pop(0)

    def parsed(cls, step):
        return build(cls, build_parser().parse_args(step.argv))

    for c, window in ((quality.FULL, 256), (quality.TINY, 32)):
        steps = {s.name: s for s in quality.plan(tmp_path, dict(c, methods=["lqs", "pds"], arms=None), [1, 2], False)}
        expected = {
            "lqs-folding": ("folding", None, {"layers": 3}),
            "lqs-stair": ("stair", None, {}),
            "lqs-saw": ("saw", None, {}),
            "lqs-folding-jitter-2": ("folding", window, {"layers": 3, "seed": 2}),
            "lqs-shuffle-1": ("shuffle", None, {"seed": 1}),
        }
        for name, (method, jitter, params) in expected.items():
            step = steps[f"order-{name}"]
            cfg = parsed(OrderConfig, step)
            given = {k: getattr(cfg, k) for k in ORDER_PARAMS if getattr(cfg, k) is not None}
            check_params(cfg.method, given, cfg.jitter)
            assert (cfg.method, cfg.jitter, given) == (method, jitter, params), name
            assert step.after == ["select-lqs"] and f"/curated/{name}/ordered" in step.argv[-1]
        for arm, data in (("lqs-folding", "lqs-folding"), ("lqs-folding-jitter", "lqs-folding-jitter-2")):
            for seed in (1, 2):
                pre = parsed(PretrainConfig, steps[f"pretrain-{arm}-s{seed}"])
                want = data if arm == "lqs-folding" else f"{arm}-{seed}"
                assert pre.data == [str(tmp_path / "curated" / want / "ordered")] and pre.seed == seed
                assert pre.valid_data == str(tmp_path / "data" / "holdout") and pre.eval_max_length == 1024
                assert pre.eval_interval == c["eval_interval"]
                assert (f"evaluate-{arm}-s{seed}" in steps) == (seed == 1)  # checks the curve's last point
        for seed in (1, 2):  # RANDOM: its own pick, shuffle and initial weights per seed; FULL: both paths
            rnd = parsed(PretrainConfig, steps[f"pretrain-random-s{seed}"])
            assert rnd.seed == seed and rnd.data == [str(tmp_path / "curated" / f"random-{seed}" / "ordered")]
            assert steps[f"pick-random-{seed}"].func_id == f"pick:{seed}"
            assert parsed(OrderConfig, steps[f"order-random-{seed}"]).seed == seed
            full = parsed(PretrainConfig, steps[f"pretrain-full-s{seed}"])
            order = parsed(OrderConfig, steps[f"order-full-{seed}"])
            assert (order.method, order.seed, order.data) == ("shuffle", seed, str(tmp_path / "data" / "corpus"))
            assert full.data == [order.out] and not full.shuffle and full.seed == seed
            old = parsed(PretrainConfig, steps[f"pretrain-full-pretrain-shuffle-s{seed}"])
            assert old.shuffle and old.data == [str(tmp_path / "data" / "corpus")] and old.seed == seed
    steps = {
        s.name: s for s in quality.plan(tmp_path, dict(quality.FULL, methods=["lqs", "pds"], arms=None), [1], False)
    }
    assert "annotate-lqs-am150-lr0.003-tnall-T20-K5-B16-L128-lrauto" in steps and "annotate-pds-am150" not in str(steps)
    study = parsed(PretrainConfig, steps["pretrain-lqs-folding-am150-s1"])
    assert study.data == [str(tmp_path / "curated" / "lqs-folding-am150" / "ordered")]
    assert steps["order-lqs-folding-am150"].after == ["select-lqs-am150"]
    names = list(steps)
    assert names.index("evaluate-lqs-folding-jitter-s1") < names.index("pretrain-annotation-model-am150-lr0.003")


def test_quality_online_arms(tmp_path):
    """bench_quality.py's online arms: ``pretrain --online-select dot`` on FULL's stream of seed k (the whole
    corpus, ``order --method shuffle --seed k``), towards the annotation's target set (not the held-out half the
    curves measure), at every arm's B and steps (ONLINE-DOT) and at a plain arm's training FLOPs (ONLINE-DOT-FLOPS:
    fewer steps, counted from the model's own weight matrices); the smoke plan (--tiny) has none."""
    import dataclasses

    from lqs_megatron.cli import build_parser
    from lqs_megatron.cli.options import build
    from lqs_megatron.models.config import load_model_config
    from lqs_megatron.models.loading import build_model
    from lqs_megatron.training.config import PretrainConfig

    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    try:
        import bench_quality as quality
    finally:
        sys.path.pop(0)

    c = dict(quality.FULL, methods=["lqs", "pds"], arms=None)
    # the FLOPs count from the weight matrices of the model the arms train (the embedding is a lookup)
    model = build_model(dataclasses.replace(load_model_config("tiny"), vocab_size=c["vocab"]), None, seed=0)
    mats = {n: p.numel() for n, p in model.named_parameters() if p.dim() == 2 and not n.startswith("tok_emb")}
    head = mats.pop("output.weight")
    body = sum(mats.values())
    T, C, M = c["seq"], c["online_c"], c["online_refresh"]
    online = 6 * C * T * (body + head) + 2 * T * body + 4 * T * head + 6 * (T + 1) * (body + head) / M
    want = online / (6 * T * (body + head))  # FLOPs per sample of B: an online step over a plain one
    f = quality.online_flops(c)
    assert abs(f["ratio"] - want) < 1e-12 * want and f["steps"] == int(c["steps"] // want)
    assert f["steps"] * f["ratio"] <= c["steps"] < (f["steps"] + 1) * f["ratio"]
    steps = {s.name: s for s in quality.plan(tmp_path, c, [1, 2], False)}
    target = str(quality.layout(tmp_path, c)["target"])
    for seed in (1, 2):
        full = build(PretrainConfig, build_parser().parse_args(steps[f"pretrain-full-s{seed}"].argv))
        for arm, n in (("online-dot", c["steps"]), ("online-dot-flops", f["steps"])):
            step = steps[f"pretrain-{arm}-s{seed}"]
            pre = build(PretrainConfig, build_parser().parse_args(step.argv))
            assert (pre.online_select, pre.target, pre.candidates_per_pick, pre.target_refresh) == (
                "dot",
                target,
                2,
                10,
            )
            assert pre.target != pre.valid_data == str(tmp_path / "data" / "holdout")
            assert pre.data == full.data and pre.seed == seed and pre.steps == n
            same = ("global_batch_size", "max_length", "lr", "model_config", "eval_interval", "eval_max_length")
            assert all(getattr(pre, k) == getattr(full, k) for k in same)
            assert pre.warmup_steps == max(1, n // 20)
            assert f"order-full-{seed}" in step.after and "tokenize-target-tnall" in step.after
            assert (f"evaluate-{arm}-s{seed}" in steps) == (seed == 1)
    assert quality.arm_list(c)[-4:] == ["online-dot", "online-dot-flops", "lqs-shuffle-am150", "lqs-folding-am150"]
    # --arms online-dot: FULL's streams and the target, no annotation
    only = [s.name for s in quality.plan(tmp_path, dict(c, arms=["online-dot"]), [1], False)]
    needed = quality.needed(quality.plan(tmp_path, c, [1], False), {"pretrain-online-dot-s1", "evaluate-online-dot-s1"})
    assert "pretrain-online-dot-s1" in only and not any(s.name.startswith("annotate") for s in needed)
    tiny = quality.plan(tmp_path, dict(quality.TINY, methods=["lqs", "pds"], arms=None), [1], False)
    assert not any("online" in s.name for s in tiny) and "online-dot" not in quality.arm_list(quality.TINY)
    verdict = quality.online_verdicts({"online-dot": {"diff": {"mean": -0.1, "std": 0.04, "n": 3}}})
    assert verdict["online-dot"]["beats_by_2std"] and abs(verdict["online-dot"]["stds"] - 2.5) < 1e-12
    assert not quality.online_verdicts({"online-dot": {"diff": {"mean": -0.1, "std": 0.06, "n": 3}}})["online-dot"][
        "beats_by_2std"
    ]
    # the per-source kept rates: mean over the seeds that have the pretrain's report, highest first
    rng = np.random.default_rng()
    rates = rng.uniform(size=(2, 3))
    for k, seed in enumerate((1, 3)):
        out = tmp_path / "final" / "online-dot" / f"s{seed}" / "ckpt"
        out.mkdir(parents=True)
        sources = {f"src{j}": {"candidates": 9, "kept": 4, "kept_rate": float(rates[k, j])} for j in range(3)}
        (out / "online_selection_sources.json").write_text(json.dumps({"by": "source", "sources": sources}))
    got = quality.online_sources(tmp_path, "online-dot", [1, 2, 3])
    want = {f"src{j}": round(float(rates[:, j].mean()), 3) for j in range(3)}
    assert got == want and list(got.values()) == sorted(want.values(), reverse=True)
