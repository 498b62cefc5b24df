"""Figures a run writes next to its report (PNG, written atomically)."""
from __future__ import annotations

from pathlib import Path

from .files import atomic_write


def save_sparsity_history(history: list[dict], path: str | Path) -> None:
    """Sparsity of each component (and overall) over training steps, one line each."""
    import matplotlib
    matplotlib.use("Agg")  # files only: no display needed
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(6, 3.5))
    steps = [point["step"] for point in history]
    for component in (key for key in (history[0] if history else {}) if key != "step"):
        axes.plot(steps, [100 * point[component] for point in history], label=component,
                  linewidth=2.5 if component == "overall" else 1.5)
    axes.set_xlabel("training step")
    axes.set_ylabel("sparsity (%)")
    axes.set_title("learned sparsity per component")
    axes.grid(alpha=0.3)
    if history:
        axes.legend()
    figure.tight_layout()
    atomic_write(path, lambda temporary: figure.savefig(temporary, format="png", dpi=120))
    pyplot.close(figure)
