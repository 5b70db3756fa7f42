"""Progress and metrics of long jobs: the one facility every command uses.

- :class:`Progress`: a tqdm bar on a terminal (counts, rate, ETA, a postfix such as tokens/s),
  a log line every ``log_every_s`` seconds otherwise (batch jobs write no bars into logs):
  ``DESC: done/total units, RATE, ETA h:mm:ss`` (:meth:`Progress.status`), the rate in
  units/s or s/unit, whichever is at least 1 (never ``0.0/s``). ``LQS_PROGRESS_SECONDS``
  overrides the interval (``lqs pipeline`` sets it for its steps and relays their lines).
  The data tools count documents and tokens with it, the trainers optimizer steps.
- :class:`MetricsLog`: ``OUT/metrics.jsonl`` (one JSON object per record, each with a
  ``step``), TensorBoard scalars under ``OUT/tb`` when ``tensorboard`` is installed, a
  Weights & Biases run when a project is given, and ``OUT/loss.png`` (the loss curves,
  :func:`plot_metrics`) when it is closed. Only the main rank writes (``active``).

Any long job can log through :class:`MetricsLog`; the annotation, for instance::

    from lqs_megatron.utils.progress import MetricsLog

    with MetricsLog(out, active=dims.is_main, plot=False) as metrics:
        for k, ... in sweep:
            metrics.write({"step": k, "annotate/target_loss": t, "annotate/train_loss": l, "annotate/seconds": s})

A key with a ``/`` is a TensorBoard tag as given; other keys go under ``valid/`` (those
starting with ``valid``) or ``train/``. Non-finite numbers are stored as the strings
``"nan"``, ``"inf"``, ``"-inf"`` (JSON has no NaN) and skipped by TensorBoard and wandb.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
import uuid
from pathlib import Path

from lqs_megatron.errors import LQSError

logger = logging.getLogger("lqs_megatron.data")

METRICS_FILE = "metrics.jsonl"
PROGRESS_SECONDS_ENV = "LQS_PROGRESS_SECONDS"
"""Environment variable: seconds between progress log lines (overrides each job's own interval)."""
PLOT_FILE = "loss.png"


class Progress:
    """Counts items (documents, sequences, steps) and tokens; a tqdm bar on a terminal, log lines otherwise.

    ``total``/``initial``: a bar with an end (``initial`` for resumed jobs); ``log_every_s``:
    seconds between log lines when stderr is not a terminal (None: no lines; the trainers
    log their own); ``enabled``: False on the ranks that do not report.
    """

    def __init__(
        self,
        desc: str,
        enabled: bool = True,
        log_every_s: float | None = 30.0,
        unit: str = "doc",
        total: int | None = None,
        initial: int = 0,
    ):
        self.desc, self.unit, self.total = desc, unit, total
        self.docs = self.tokens = 0
        self.start = time.perf_counter()
        self._last_log = self.start
        self.log_every_s = _env_seconds(log_every_s) if log_every_s is not None else None
        self.initial = initial
        self.enabled = enabled
        self._postfix = ""
        self._bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(
                desc=desc,
                total=total,
                initial=initial,
                unit=unit,
                unit_scale=total is None,
                file=sys.stderr,
                dynamic_ncols=True,
                mininterval=0.5,
            )

    @property
    def count(self) -> int:
        """Items counted by :meth:`update` in this process (``initial`` not included)."""
        return self.docs

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def rates(self) -> tuple[float, float]:
        """``(items/s, tokens/s)`` since the start."""
        t = max(self.elapsed, 1e-9)
        return self.docs / t, self.tokens / t

    def status(self) -> str:
        """``done/total units, RATE, ETA h:mm:ss`` (no ETA without a total, no rate before the first item)."""
        done = self.initial + self.docs
        units = plural(self.unit)
        head = f"{done}/{self.total} {units}" if self.total is not None else f"{done} {units}"
        if not self.docs:
            return head
        per_s = self.docs / max(self.elapsed, 1e-9)
        text = f"{head}, {format_rate(per_s, self.unit)}"
        if self.total is not None:
            text += f", ETA {format_duration(max(self.total - done, 0) / per_s)}"
        return text

    def set_postfix(self, text: str) -> None:
        """Text after the bar (e.g. ``loss 2.31, 41k tok/s``); also ends the periodic log lines."""
        self._postfix = text
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)

    def update(self, n: int = 1, tokens: int = 0) -> None:
        """``n`` more items holding ``tokens`` tokens."""
        self.docs += n
        self.tokens += tokens
        if self._bar is not None:
            self._bar.update(n)
            if tokens and not self._postfix:
                self._bar.set_postfix_str(f"{self.rates()[1]:,.0f} tok/s", refresh=False)
        elif self.enabled and self.log_every_s is not None and time.perf_counter() - self._last_log >= self.log_every_s:
            self._last_log = time.perf_counter()
            tps = self.rates()[1]
            extra = f", {self.tokens} tokens ({format_rate(tps, 'token')})" if self.tokens else ""
            post = f" | {self._postfix}" if self._postfix else ""
            logger.info("%s: %s%s%s", self.desc, self.status(), extra, post)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _env_seconds(default: float) -> float:
    """``LQS_PROGRESS_SECONDS`` when it holds a positive number, else ``default``."""
    try:
        value = float(os.environ.get(PROGRESS_SECONDS_ENV, ""))
    except ValueError:
        return default
    return value if value > 0 else default


def plural(unit: str) -> str:
    return unit if unit.endswith("s") or unit == "ex" else f"{unit}s"


def format_rate(per_s: float, unit: str) -> str:
    """``12.3 steps/s`` or ``4.5 s/step``: whichever number is at least 1, so no rate reads as 0.0."""
    if per_s <= 0:
        return f"0 {plural(unit)}/s"
    if per_s >= 1:
        return f"{per_s:,.0f} {plural(unit)}/s" if per_s >= 100 else f"{per_s:.1f} {plural(unit)}/s"
    inv = 1.0 / per_s
    return f"{inv:,.0f} s/{unit}" if inv >= 100 else f"{inv:.1f} s/{unit}"


def format_duration(seconds: float) -> str:
    """``m:ss`` or ``h:mm:ss``."""
    s = int(round(seconds)) if math.isfinite(seconds) else 0
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def require_wandb() -> None:
    """Raise a clear :class:`LQSError` when ``wandb`` is not installed (call it on every rank, before any work)."""
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise LQSError("--wandb needs the wandb package: pip install wandb (or lqs_megatron[wandb])") from None


def _json_value(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # "nan", "inf", "-inf": JSON has no NaN
    return v


def _number(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def _tag(key: str) -> str:
    if "/" in key:
        return key
    return f"valid/{key}" if key.startswith("valid") else f"train/{key}"


class MetricsLog:
    """``OUT/metrics.jsonl`` + TensorBoard (``OUT/tb``, when installed) + wandb (``wandb_project``) + ``OUT/loss.png``.

    ``start_step``: a resumed run's step; records after it (written by the lost part of a
    killed run) are dropped from ``metrics.jsonl``, and TensorBoard purges them too.
    ``config``: the run's settings, stored in the wandb run. ``plot``: write ``loss.png`` on close.
    """

    def __init__(
        self,
        out: str | os.PathLike,
        start_step: int = 0,
        active: bool = True,
        tensorboard: bool = True,
        wandb_project: str | None = None,
        config: dict | None = None,
        plot: bool = True,
    ):
        self.out, self.active, self.plot = Path(out), active, plot
        self.f = self.tb = self.wandb = None
        if not active:
            return
        from lqs_megatron.utils.atomic import atomic_file

        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / METRICS_FILE
        kept = []
        if path.is_file() and start_step > 0:
            kept = [ln for ln in path.read_text().splitlines() if ln.strip() and _step_of(ln) <= start_step]
        with atomic_file(path) as tmp:
            tmp.write_text("".join(ln + "\n" for ln in kept))
        self.f = open(path, "a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional (pip install lqs_megatron[tensorboard])
                SummaryWriter = None
            if SummaryWriter is not None:
                self.tb = SummaryWriter(str(self.out / "tb"), purge_step=start_step + 1 if start_step else None)
        if wandb_project:
            try:
                self.wandb = _wandb_run(self.out, wandb_project, config or {}, resumed=start_step > 0)
            except BaseException:
                self.close()
                raise

    def write(self, rec: dict) -> None:
        """Append one record (it must hold ``step``); numbers also go to TensorBoard and wandb."""
        if not self.active:
            return
        self.f.write(json.dumps({k: _json_value(v) for k, v in rec.items()}) + "\n")
        self.f.flush()
        step = int(rec["step"])
        numbers = {_tag(k): x for k, v in rec.items() if k != "step" and (x := _number(v)) is not None}
        if self.tb is not None:
            for tag, x in numbers.items():
                self.tb.add_scalar(tag, x, step)
        if self.wandb is not None and numbers:
            self.wandb.log(numbers, step=step)

    def close(self) -> None:
        """Close the log and the writers; draw ``loss.png`` (when ``plot``)."""
        if self.f is not None:
            self.f.close()
            self.f = None
            if self.plot:
                try:
                    plot_metrics(self.out / METRICS_FILE, self.out / PLOT_FILE)
                except Exception as e:  # a picture must never fail a finished run
                    logger.warning("could not draw %s: %s", self.out / PLOT_FILE, e)
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _step_of(line: str) -> float:
    try:
        return float(json.loads(line).get("step", math.inf))
    except ValueError:
        return math.inf  # a torn last line of a killed run: dropped


def _wandb_run(out: Path, project: str, config: dict, resumed: bool):
    """A wandb run logging into ``out/wandb``; a resumed run continues the same wandb run (id in ``out/wandb.json``)."""
    require_wandb()
    import wandb

    from lqs_megatron.utils.atomic import save_json

    id_file = out / "wandb.json"
    run_id = json.loads(id_file.read_text())["id"] if resumed and id_file.is_file() else uuid.uuid4().hex[:12]
    save_json(id_file, {"id": run_id, "project": project})
    return wandb.init(project=project, id=run_id, resume="allow", dir=str(out), name=out.name, config=config)


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a ``metrics.jsonl`` (a torn last line is skipped)."""
    recs = []
    for ln in Path(path).read_text().splitlines():
        try:
            recs.append(json.loads(ln))
        except ValueError:
            continue
    return recs


# panels of loss.png: (title, keys); a panel is drawn when one of its keys has numbers
_PANELS = (
    ("loss", ("loss", "valid_loss", "valid_mse", "annotate/target_loss", "annotate/train_loss")),
    ("learning rate", ("lr",)),
    ("gradient norm", ("grad_norm",)),
    ("validation correlation", ("valid_pearson", "valid_spearman")),
)


def plot_metrics(metrics: str | os.PathLike, png: str | os.PathLike, title: str | None = None) -> Path | None:
    """Draw the curves of ``metrics.jsonl`` against ``step`` into ``png`` (matplotlib, Agg); None when empty."""
    series: dict[str, tuple[list, list]] = {}
    for rec in read_metrics(metrics):
        for k, v in rec.items():
            x = _number(v)
            if k != "step" and x is not None and "step" in rec:
                xs, ys = series.setdefault(k, ([], []))
                xs.append(rec["step"])
                ys.append(x)
    panels = [(t, [k for k in keys if k in series]) for t, keys in _PANELS]
    panels = [(t, ks) for t, ks in panels if ks]
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from lqs_megatron.utils.atomic import atomic_file

    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, (name, keys) in zip(axes[0], panels):
        for k in keys:
            xs, ys = series[k]
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, ms=3, lw=1.2, label=k)
        ax.set_xlabel("step")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=8)
    fig.suptitle(title or str(Path(metrics).parent.name))
    fig.tight_layout()
    with atomic_file(png) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return Path(png)
