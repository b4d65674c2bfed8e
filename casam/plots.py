"""Figures a person would rather look at than read: runs compared epoch by epoch."""

from __future__ import annotations

import json
from pathlib import Path

PANELS = (
    ("test_acc", "test accuracy"),
    ("sel_precision", "likely-clean precision"),
    ("memorization", "memorisation of wrong labels"),
)


def read_run(run_dir: str | Path) -> tuple[str, list[dict]]:
    """(label, per-epoch rows) of a run folder; the label names the method and noise from config.yaml."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} holds no metrics.jsonl; is it a casam run folder?")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    label = run_dir.name
    config = run_dir / "config.yaml"
    if config.is_file():
        import yaml

        c = yaml.safe_load(config.read_text()) or {}
        method = f"{c.get('optimizer')}+{c.get('loss')}" + ("" if c.get("selection", "none") == "none" else f"+{c['selection']}")
        label = f"{method} ({c.get('noise')}, seed {c.get('seed')})"
    return label, rows


def _save(fig, out: str | Path) -> Path:
    """Write the figure as a PNG (creating its folder) and free it."""
    import matplotlib.pyplot as plt

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_runs(run_dirs: list[str | Path], out: str | Path, *, title: str | None = None) -> Path:
    """Write one PNG with a panel per metric (test accuracy, selection precision, memorisation) per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [read_run(d) for d in run_dirs]
    fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 4), constrained_layout=True)
    for ax, (key, name) in zip(axes, PANELS):
        for label, rows in runs:
            points = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None and r[key] == r[key]]
            if points:
                ax.plot(*zip(*points), marker=".", label=label)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if not ax.lines:
            ax.text(0.5, 0.5, "not measured\n(no selection or no ground truth)", ha="center", va="center", transform=ax.transAxes, color="grey")
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, out)


def plot_split(run_dir: str | Path, out: str | Path) -> Path:
    """One CA-SAM run's split over training: selection precision and recall per epoch, overall (black)
    and per class (thin lines), and, when the run logged it (--log-cosine), the cosine between the
    clean-subset and the full-batch gradient at every step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label, rows = read_run(run_dir)
    split = [r for r in rows if r.get("sel_precision") is not None]
    if not split:
        raise ValueError(f"{run_dir} has no selection metrics: plot_split needs a CA-SAM run on data with known truth")
    steps = [(r["epoch"], r["grad_cosine_steps"]) for r in rows if r.get("grad_cosine_steps")]
    panels = [("sel_precision", "likely-clean precision"), ("sel_recall", "likely-clean recall")]
    fig, axes = plt.subplots(1, len(panels) + bool(steps), figsize=(5 * (len(panels) + bool(steps)), 4), constrained_layout=True)
    for ax, (key, name) in zip(axes, panels):
        epochs = [r["epoch"] for r in split]
        by_class = [r.get(f"{key}_by_class") for r in split]
        if all(by_class):
            for c in range(len(by_class[0])):
                ax.plot(epochs, [v[c] for v in by_class], lw=0.8, alpha=0.7, label=f"class {c}")
        ax.plot(epochs, [r[key] for r in split], color="black", lw=2, marker=".", label="all")
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    if steps:
        ax = axes[-1]
        xs, ys = [], []
        for epoch, values in steps:
            n = len(values)
            xs += [epoch - 1 + (i + 1) / n for i in range(n)]
            ys += values
        ax.plot(xs, ys, lw=0.6)
        ax.set_title("cos(clean-subset gradient, full-batch gradient)")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.suptitle(label)
    return _save(fig, out)
