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
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
