"""Figures a run writes next to its report (PNG, written atomically)."""
from __future__ import annotations

from pathlib import Path

from .files import atomic_write


def save_sparsity_history(history: list[dict], path: str | Path) -> None:
    """Sparsity of each component (and overall) over training steps, one line each."""
    pyplot = pyplot_for_files()
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
    save_figure(figure, path)
    pyplot.close(figure)


def pyplot_for_files():
    import matplotlib
    matplotlib.use("Agg")  # files only: no display needed
    from matplotlib import pyplot
    return pyplot


def save_figure(figure, path: str | Path) -> None:
    figure.tight_layout()
    atomic_write(path, lambda temporary: figure.savefig(temporary, format="png", dpi=120))


def save_similarity_heatmap(record: dict, metric: str, weighting: str, path: str | Path) -> None:
    """Task x task matrix of one metric (mean over seeds and sparsities); the diagonal is 1."""
    pyplot = pyplot_for_files()
    tasks = record["tasks"]
    matrix = [[1.0 if a == b else record["pairs"][metric][weighting][
        f"{a}/{b}" if tasks.index(a) < tasks.index(b) else f"{b}/{a}"]["mean"]
        for b in tasks] for a in tasks]
    figure, axes = pyplot.subplots(figsize=(1.2 * len(tasks) + 2, 1.2 * len(tasks) + 1))
    image = axes.imshow(matrix, cmap="viridis")
    axes.set_xticks(range(len(tasks)), tasks)
    axes.set_yticks(range(len(tasks)), tasks)
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            axes.text(j, i, f"{value:.2f}", ha="center", va="center", color="white")
    axes.set_title(f"{metric} ({weighting} layer weighting)")
    figure.colorbar(image, ax=axes)
    save_figure(figure, path)
    pyplot.close(figure)


def save_layer_iou(record: dict, path: str | Path) -> None:
    """Per shared layer, each pair's IoU (mean over seeds and sparsities), the all-task IoU
    and the watershed layer."""
    pyplot = pyplot_for_files()
    curves = record["layer_iou"]
    figure, axes = pyplot.subplots(figsize=(8, 3.8))
    layers = range(1, len(curves["layers"]) + 1)
    for pair, by_sparsity in curves["pairs"].items():
        values = [sum(v) / len(v) for v in zip(*by_sparsity.values())]
        axes.plot(layers, values, label=pair, linewidth=1.2)
    if "all_tasks" in curves:
        values = [sum(v) / len(v) for v in zip(*curves["all_tasks"].values())]
        axes.plot(layers, values, label="all tasks", color="black", linewidth=2)
    if record["watershed"] is not None:
        axes.axvline(record["watershed"]["index"] + 1.5, color="red", linestyle="--",
                     label=f"watershed after layer {record['watershed']['index'] + 1}")
    axes.set_xlabel("shared layer (model order)")
    axes.set_ylabel("IoU of the tasks' masks")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    save_figure(figure, path)
    pyplot.close(figure)


def save_speedup_plot(rows: list[dict], path: str | Path) -> None:
    """Sparse kernel speed-up over the dense conv against sparsity, one line per layer shape
    (rows of ``prunekit.ops.conv_timing.bench_conv``); the dashed line is break-even."""
    pyplot = pyplot_for_files()
    figure, axes = pyplot.subplots(figsize=(7, 4.5))
    for layer in dict.fromkeys(row["layer"] for row in rows):
        points = sorted((row["sparsity"], row["speedup"]) for row in rows
                        if row["layer"] == layer)
        axes.plot([100 * s for s, _ in points], [x for _, x in points], marker="o", label=layer)
    axes.axhline(1.0, color="black", linestyle="--", linewidth=1)
    axes.set_xlabel("sparsity (%)")
    axes.set_ylabel("speed-up over dense (x)")
    axes.set_title(f"sparse_conv2d against the dense conv, batch {rows[0]['batch']}"
                   if rows else "sparse_conv2d against the dense conv")
    axes.grid(alpha=0.3)
    if rows:
        axes.legend(fontsize=7)
    save_figure(figure, path)
    pyplot.close(figure)
