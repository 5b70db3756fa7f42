import pytest
import yaml

from lqs_megatron.errors import LQSError
from lqs_megatron.pipeline.config import config_from_dict, load_config
from lqs_megatron.pipeline.demo import DEMO_CONFIG
from lqs_megatron.pipeline.plan import Plan


def _minimal(tmp_path):
    return {"workdir": "run", "data": {"corpus": ["c.jsonl"], "target": "t.jsonl"}}


def test_relative_paths_resolve_against_the_config_dir(tmp_path):
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(_minimal(tmp_path)))
    cfg = load_config(tmp_path / "p.yaml")
    assert cfg.workdir == str(tmp_path / "run")
    assert cfg.data.corpus == [str(tmp_path / "c.jsonl")] and cfg.data.target == str(tmp_path / "t.jsonl")


def test_an_hf_model_config_of_the_arms_resolves_against_the_config_dir(tmp_path):
    """pretrain.model_config: a model directory beside the YAML reaches every arm's pretrain command;
    a named config stays a name."""
    (tmp_path / "my_model").mkdir()
    (tmp_path / "my_model" / "config.json").write_text("{}")
    data = {**_minimal(tmp_path), "pretrain": {"model_config": "my_model"}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(data))
    plan = Plan(load_config(tmp_path / "p.yaml"))
    arms = [s for s in plan.steps() if s.name.startswith("pretrain-") and s.name != "pretrain-annotation-model"]
    assert len(arms) == 3
    for step in arms:
        assert step.argv[step.argv.index("--model-config") + 1] == str(tmp_path / "my_model")
    annotation = next(s for s in plan.steps() if s.name == "pretrain-annotation-model")
    assert "tiny" in annotation.argv or "--model-config" not in annotation.argv


def test_online_selection_keys_reach_the_arms_pretrain(tmp_path):
    """pretrain.online_select / target / candidates_per_pick (docs/online_selection.md): flags of every arm's
    ``lqs pretrain``, the target prefix resolved against the config's directory."""
    data = {**_minimal(tmp_path), "pretrain": {"online_select": "greedy", "target": "tgt", "candidates_per_pick": 3}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(data))
    arms = [s for s in Plan(load_config(tmp_path / "p.yaml")).steps() if s.name.startswith("pretrain-")]
    arms = [s for s in arms if s.name != "pretrain-annotation-model"]
    assert len(arms) == 3
    for step in arms:
        argv = step.argv
        assert argv[argv.index("--online-select") + 1] == "greedy"
        assert argv[argv.index("--target") + 1] == str(tmp_path / "tgt")
        assert argv[argv.index("--candidates-per-pick") + 1] == "3"


@pytest.mark.parametrize(
    "patch,match",
    [
        ({"data": {"corpus": ["c"], "target": "t", "feild": "x"}}, "unknown key.*feild"),
        ({"annotate": {"methods": ["lqs", "dsir"]}}, "unknown method 'dsir'"),
        ({"selection": {"method": "threshold"}}, "needs selection.threshold"),
        ({"selection": {"order": "random"}}, "selection.order"),
        ({"data": {"corpus": [], "target": "t"}}, "corpus names no file"),
    ],
)
def test_bad_configs_name_the_key(tmp_path, patch, match):
    data = {**_minimal(tmp_path), **patch}
    with pytest.raises(LQSError, match=match):
        config_from_dict(data, tmp_path)


def test_plan_of_the_demo_config_is_consistent(tmp_path):
    data = yaml.safe_load(DEMO_CONFIG.read_text())
    data.update(workdir=str(tmp_path), data={**data["data"], "corpus": ["c.jsonl"], "target": "t.jsonl"})
    plan = Plan(config_from_dict(data, tmp_path))
    steps = plan.steps()
    names = [s.name for s in steps]
    assert len(names) == len(set(names))
    seen = set()
    for s in steps:  # every dependency runs earlier; every command is a real subcommand
        assert set(s.after) <= seen, (s.name, s.after)
        seen.add(s.name)
    from lqs_megatron.cli import build_parser

    commands = set(build_parser()._subparsers._group_actions[0].choices)
    assert {s.argv[0] for s in steps if s.argv} <= commands | {
        "tokenize",
        "train-tokenizer",
        "tokenize-target",
        "pretrain",
        "export-hf",
        "evaluate",
        "annotate",
        "prepare-scorer-data",
        "train-scorer",
        "score",
        "select",
        "order",
        "sample-proxy",
    }
    # the baseline twice (baseline_seeds [2, 3]), the scored arms once: one more pretrain than one seed each
    assert names[-1] == "evaluate-random-s3" and {"pick-random", "pick-random-s3"} <= set(names)
    assert sum(n.startswith("pretrain-") for n in names) == 5 and "export-random-s3" not in names


def test_distributed_steps_run_under_torchrun_on_one_node(tmp_path):
    import sys

    from lqs_megatron.pipeline.runner import Runner, Step

    step = Step("pretrain-x", ["pretrain", "--steps", "3"], distributed=True, resume_flag="--resume")
    one = Runner(tmp_path, nproc_per_node=1)
    assert one.command(step, resume=False) == [sys.executable, "-m", "lqs_megatron", "pretrain", "--steps", "3"]
    eight = Runner(tmp_path, nproc_per_node=8, torchrun_args=["--master-port=29600"])
    cmd = eight.command(step, resume=True)
    assert cmd[1:7] == [
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=8",
        "--master-port=29600",
        "-m",
    ]
    assert cmd[-4:] == ["pretrain", "--steps", "3", "--resume"]
    single = Step("select", ["select", "--k", "1"])  # not distributed: one process whatever the launch
    assert eight.command(single, resume=False)[1:3] == ["-m", "lqs_megatron"]


@pytest.mark.parametrize(
    "patch,match",
    [
        ({"proxy": {"num": "twenty"}}, r"p\.yaml: proxy\.num: expected an integer, got 'twenty'"),
        ({"annotate": {"methods": "lqs"}}, r"p\.yaml: annotate\.methods: expected a list of strings, got 'lqs'"),
        (
            {"annotate": {"steps": 5, "interval": 10}},
            r"p\.yaml: annotate\.steps: --steps 5 is smaller than --interval 10",
        ),
        ({"scorer": {"lr": 0}}, r"p\.yaml: scorer: invalid --lr"),
        ({"pretrain": {"precision": "fp16"}}, r"p\.yaml: pretrain\.precision: expected one of auto, bf16, fp32"),
        ({"evaluate": {"max_length": 1.5}}, r"p\.yaml: evaluate\.max_length: expected an integer"),
        (
            {"data": {"corpus": ["c"], "target": "t", "mode": "chunk"}},
            r"p\.yaml: data\.mode: --mode chunk needs --max-length",
        ),
    ],
)
def test_values_are_checked_against_the_steps_before_anything_runs(tmp_path, patch, match):
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({**_minimal(tmp_path), **patch}))
    with pytest.raises(LQSError, match=match):
        load_config(tmp_path / "p.yaml")


def test_yaml_numbers_without_a_dot_are_numbers(tmp_path):
    """YAML 1.1 reads 1e-3 as a string; a float setting takes it as the number (as the flag would)."""
    cfg = config_from_dict({**_minimal(tmp_path), "pretrain": {"lr": "1e-3"}, "scorer": {"lr": 2}}, tmp_path)
    assert cfg.pretrain.lr == 1e-3 and isinstance(cfg.scorer.lr, float)


def test_sections_take_their_defaults_from_the_steps(tmp_path):
    from lqs_megatron.lqs.config import AnnotateConfig
    from lqs_megatron.scorer.config import TrainScorerConfig

    cfg = config_from_dict(_minimal(tmp_path), tmp_path)
    step = AnnotateConfig(model="m", train="t", target="t", proxy="p", out="o")
    for key in ("steps", "global_batch_size", "interval", "max_length", "micro_batch_size", "precision", "lr_grid"):
        assert getattr(cfg.annotate, key) == getattr(step, key), key
    # the one default the pipeline changes: the probe picks eta (docs/quality.md); the command keeps 0.008
    assert cfg.annotate.lr == "auto" and step.lr == 0.008
    # and the order: saw, the best ordering of docs/quality.md's seeded benchmark, planned with its own settings
    from lqs_megatron.cli import build_parser
    from lqs_megatron.cli.options import build
    from lqs_megatron.curate.config import OrderConfig

    assert cfg.selection.order == "saw"
    steps = {s.name: s for s in Plan(cfg).steps()}
    order = build(OrderConfig, build_parser().parse_args(steps["order-lqs"].argv))
    assert (order.method, order.layers, order.sections, order.transition_ratio) == ("saw", None, None, None)
    assert cfg.scorer.warmup_steps == TrainScorerConfig().warmup_steps
    assert cfg.scorer.global_batch_size == TrainScorerConfig().global_batch_size


def test_every_planned_command_parses_with_the_section_values(tmp_path):
    """The plan's command lines are the public commands' flags: each parses, and a section value that
    differs from the step's default reaches the step."""
    from lqs_megatron.cli import build_parser

    data = yaml.safe_load(DEMO_CONFIG.read_text())
    data.update(workdir=str(tmp_path), data={**data["data"], "corpus": ["c.jsonl"], "target": "t.jsonl"})
    data["annotate"] |= {"micro_batch_size": 3, "precision": "fp64"}
    data["scorer"] |= {"precision": "fp32", "use_bos": False}
    data["pretrain"] |= {"warmup_steps": 7, "shuffle": True}
    steps = Plan(config_from_dict(data, tmp_path)).steps()
    parser = build_parser()
    parsed = {s.name: vars(parser.parse_args(s.argv)) for s in steps if s.argv}
    a = parsed["annotate-lqs"]
    assert (a["micro_batch_size"], a["precision"], a["steps"], a["interval"]) == (3, "fp64", 20, 2)
    t = parsed["train-scorer-lqs"]
    assert (t["precision"], t["use_bos"], t["warmup_steps"], t["global_batch_size"]) == ("fp32", False, 20, 16)
    p = parsed["pretrain-lqs"]
    assert (p["warmup_steps"], p["shuffle"], p["steps"], p["seed"]) == (7, True, 300, 2)
    assert parsed["prepare-scorer-data-lqs"]["src_tokenizer"] == str(tmp_path / "tokenizer")


@pytest.mark.parametrize(
    "order,extra,expected",
    [
        ("stair", {}, {}),
        ("saw", {"layers": 3, "sections": 4, "transition_ratio": 0.1}, {"layers": 3, "sections": 4}),
        ("segment", {"front_ratio": 0.2, "back_from": "low"}, {"front_ratio": 0.2, "back_from": "low", "seed": 5}),
        ("folding", {"jitter": 64}, {"jitter": 64, "seed": 5, "layers": None}),
        ("shuffle", {}, {"seed": 5}),
    ],
)
def test_selection_order_takes_every_lqs_order_method_and_its_settings(tmp_path, order, extra, expected):
    """selection.order is any ``lqs order`` method, its settings the section's keys of OrderConfig (with the
    section's seed where the method or the jitter takes one); the baseline keeps its shuffle."""
    from lqs_megatron.cli import build_parser
    from lqs_megatron.cli.options import build
    from lqs_megatron.curate.config import OrderConfig

    data = {**_minimal(tmp_path), "selection": {"order": order, "seed": 5, **extra}}
    steps = {s.name: s for s in Plan(config_from_dict(data, tmp_path)).steps()}
    cfg = build(OrderConfig, build_parser().parse_args(steps["order-lqs"].argv))
    assert cfg.method == order
    for key, value in expected.items():
        assert getattr(cfg, key) == value, key
    rnd = build(OrderConfig, build_parser().parse_args(steps["order-random"].argv))
    assert (rnd.method, rnd.seed, rnd.jitter, rnd.layers) == ("shuffle", 5, None, None)


def test_a_setting_the_order_does_not_take_is_blamed_on_its_key(tmp_path):
    data = {**_minimal(tmp_path), "selection": {"order": "sorting", "sections": 3}}
    with pytest.raises(LQSError, match=r"selection\.sections: --sections does not apply to --method sorting"):
        config_from_dict(data, tmp_path)
    with pytest.raises(LQSError, match="selection.jitter"):
        config_from_dict({**_minimal(tmp_path), "selection": {"jitter": -1}}, tmp_path)


def test_seeds_pretrain_every_arm_and_the_baseline_with_its_own_pick(tmp_path):
    """pretrain.seeds: every arm once per seed (its data shared, the initial weights not); baseline_seeds: the
    baseline's own, each run with its pick and shuffle seeded by selection.seed + i; every arm run carries
    the target-loss curve of ``lqs evaluate``'s metric."""
    from lqs_megatron.cli import build_parser
    from lqs_megatron.cli.options import build
    from lqs_megatron.curate.config import OrderConfig
    from lqs_megatron.training.config import PretrainConfig

    data = {**_minimal(tmp_path), "annotate": {"methods": ["lqs"]}, "selection": {"seed": 7}}
    data |= {"pretrain": {"seeds": [4, 9], "baseline_seeds": [4, 9, 11]}, "evaluate": {"max_length": 200}}
    plan = Plan(config_from_dict(data, tmp_path))
    steps = {s.name: s for s in plan.steps()}
    assert plan.runs == {
        "lqs": [(4, "lqs"), (9, "lqs-s9")],
        "random": [(4, "random"), (9, "random-s9"), (11, "random-s11")],
    }
    parse = build_parser().parse_args
    for run, seed, data_run in (("lqs", 4, "lqs"), ("lqs-s9", 9, "lqs"), ("random-s11", 11, "random-s11")):
        pre = build(PretrainConfig, parse(steps[f"pretrain-{run}"].argv))
        assert pre.seed == seed and pre.data == [str(plan.train_data(data_run))]
        assert (pre.valid_data, pre.eval_max_length, pre.eval_interval) == (str(plan.target), 200, 10)
        assert f"evaluate-{run}" in steps and (f"export-{run}" in steps) == (run in ("lqs", "random"))
    for i, run in enumerate(("random", "random-s9", "random-s11")):
        assert steps[f"pick-{run}"].func_id == f"pick-random:{7 + i}"
        order = build(OrderConfig, parse(steps[f"order-{run}"].argv))
        assert order.seed == 7 + i and order.data == str(plan.selected(run))
    with pytest.raises(LQSError, match="pretrain.seeds must be distinct"):
        config_from_dict({**_minimal(tmp_path), "pretrain": {"seeds": [1, 1]}}, tmp_path)


def test_a_bad_key_of_a_demo_override_is_blamed_on_that_file(tmp_path):
    from lqs_megatron.pipeline.demo import demo_config

    override = tmp_path / "mine.yaml"
    override.write_text("annotate:\n  stpes: 3\n")
    with pytest.raises(LQSError, match=r"mine\.yaml: annotate: unknown key 'stpes'") as e:
        demo_config(tmp_path / "w", str(override))
    assert "demo.yaml" not in str(e.value)
    override.write_text("proxy:\n  num: twenty\n")
    with pytest.raises(LQSError, match=r"mine\.yaml: proxy\.num: expected an integer"):
        demo_config(tmp_path / "w", str(override))
    assert not (tmp_path / "w").exists()  # nothing built before the check


def test_selection_view_plans_views(tmp_path):
    """``selection: {view: true}``: every select and order of the plan writes a view (``--view``), its step is done
    when the view file exists, and pretraining reads the view; without the key nothing changes."""
    from lqs_megatron.cli import build_parser

    data = yaml.safe_load(DEMO_CONFIG.read_text())
    data.update(workdir=str(tmp_path), data={**data["data"], "corpus": ["c.jsonl"], "target": "t.jsonl"})
    plain = Plan(config_from_dict(data, tmp_path)).steps()
    data["selection"] = {**data.get("selection", {}), "view": True}
    steps = Plan(config_from_dict(data, tmp_path)).steps()
    parser = build_parser()
    curate = [s for s in steps if s.name.startswith(("select-", "order-"))]
    assert curate and len(curate) == len([s for s in plain if s.name.startswith(("select-", "order-"))])
    for s in curate:
        assert vars(parser.parse_args(s.argv))["view"] is True, s.argv
        out = s.argv[s.argv.index("--out") + 1]
        assert f"{out}.view.json" in s.outputs and f"{out}.bin" not in s.outputs
    for s in plain:
        if s.name.startswith(("select-", "order-")):
            assert "--view" not in s.argv and any(o.endswith(".bin") for o in s.outputs)
    pre = {s.name: s.argv for s in steps if s.name.startswith("pretrain-") and s.name != "pretrain-annotation-model"}
    orders = {s.argv[s.argv.index("--out") + 1] for s in curate if s.name.startswith("order-")}
    assert pre and all(a[a.index("--data") + 1] in orders for a in pre.values())
