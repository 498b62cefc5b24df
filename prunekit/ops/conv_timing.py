"""Dense against sparse convolution, timed: one layer on its real input (export, ``bench
model``) or reference layer shapes over sparsities (``bench conv``).

Timings are medians of ``repeats`` calls after warm-up calls, under ``torch.no_grad``, with a
device synchronisation inside each timed call on CUDA; what is compared is timed in turns
(dense call, sparse call, dense call, ...). Dense is ``F.conv2d`` on the masked weight
(oneDNN on CPU, cuDNN on CUDA); sparse is ``SparseConv2d`` (only kept weights multiplied).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from .sparse_conv import SparseConv2d
from ..timing import interleaved_median_ms



@dataclass(frozen=True)
class ConvShape:
    """A conv layer and the size of the image it sees."""
    name: str
    in_channels: int
    out_channels: int
    kernel: int
    height: int
    width: int
    padding: int = 0
    dilation: int = 1

    def output_positions(self, batch: int) -> int:
        """Output positions of one call at stride 1: each weight is one multiply-add at each."""
        reach = self.dilation * (self.kernel - 1)
        return (batch * (self.height + 2 * self.padding - reach)
                * (self.width + 2 * self.padding - reach))


# ResNet-50's layers and the DeepLab-ResNet34 backbone's dilated ones (at NYUv2's 288x384 input,
# output stride 8: 36x48).
REFERENCE_SHAPES = (
    ConvShape("3x3 64@56x56", 64, 64, 3, 56, 56, padding=1),
    ConvShape("3x3 128@28x28", 128, 128, 3, 28, 28, padding=1),
    ConvShape("3x3 256@14x14", 256, 256, 3, 14, 14, padding=1),
    ConvShape("3x3 512@7x7", 512, 512, 3, 7, 7, padding=1),
    ConvShape("3x3 dil 2, 256@36x48", 256, 256, 3, 36, 48, padding=2, dilation=2),
    ConvShape("3x3 dil 4, 512@36x48", 512, 512, 3, 36, 48, padding=4, dilation=4),
    ConvShape("1x1 256->64@56x56", 256, 64, 1, 56, 56),
    ConvShape("1x1 1024->256@14x14", 1024, 256, 1, 14, 14),
)


@dataclass(frozen=True)
class ConvTiming:
    dense_ms: float
    sparse_ms: float

    @property
    def speedup(self) -> float:
        """Dense time over sparse time: above 1 the sparse kernel is faster."""
        return self.dense_ms / self.sparse_ms


def time_dense_and_sparse(conv: nn.Conv2d, sparse: SparseConv2d, x: torch.Tensor,
                          repeats: int) -> ConvTiming:
    """``conv`` (its weight already masked) against its ``SparseConv2d`` on input ``x``."""
    return ConvTiming(*interleaved_median_ms([conv, sparse], x, repeats))


def random_masked_conv(shape: ConvShape, sparsity: float, device: str,
                       generator: torch.Generator) -> tuple[nn.Conv2d, torch.Tensor]:
    """A conv of ``shape`` whose weight keeps a random ``1 - sparsity`` share (as a saliency
    top-k leaves an unstructured mask), with the pruned weights set to zero."""
    conv = nn.Conv2d(shape.in_channels, shape.out_channels, shape.kernel, padding=shape.padding,
                     dilation=shape.dilation)
    mask = torch.rand(conv.weight.shape, generator=generator) >= sparsity
    with torch.no_grad():
        conv.weight.mul_(mask)
    return conv.to(device).eval(), mask.to(device)


def bench_conv(sparsities: Sequence[float], device: str = "cpu", batch: int = 1,
               repeats: int = 10, shapes: Iterable[ConvShape] = REFERENCE_SHAPES,
               progress: Callable[[str], None] = lambda line: None,
               channels_last: bool = False) -> list[dict]:
    """One row per (shape, sparsity): dense and sparse milliseconds and the speed-up; with
    `channels_last`, both convolve the same channels-last input."""
    rows = []
    layout = torch.channels_last if channels_last else torch.contiguous_format
    for shape in shapes:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(batch, shape.in_channels, shape.height, shape.width,
                        generator=generator).to(device).contiguous(memory_format=layout)
        for sparsity in sparsities:
            conv, mask = random_masked_conv(shape, sparsity, device, generator)
            timing = time_dense_and_sparse(conv, SparseConv2d.from_conv(conv, mask), x, repeats)
            positions = shape.output_positions(batch)
            rows.append({"layer": shape.name, "batch": batch, "channels_last": channels_last,
                         "sparsity": sparsity,
                         "dense_ms": round(timing.dense_ms, 6),
                         "sparse_ms": round(timing.sparse_ms, 6),
                         "speedup": round(timing.speedup, 4),
                         # the roofline: multiply-adds per second each reaches, the sparse
                         # kernel's counting only the kept weights'
                         "dense_gmacs": round(gmacs(positions * mask.numel(), timing.dense_ms), 3),
                         "sparse_gmacs": round(gmacs(positions * int(mask.sum()),
                                                     timing.sparse_ms), 3)})
            progress(f"{shape.name} sparsity {sparsity}: {timing.speedup:.2f}x")
    return rows


def gmacs(multiply_adds: int, ms: float) -> float:
    """Billions of multiply-adds per second."""
    return multiply_adds / (ms * 1e6) if ms > 0 else float("inf")


def crossovers(rows: Sequence[dict]) -> dict[str, float | None]:
    """Per layer, the lowest measured sparsity from which the sparse kernel is faster at every
    higher measured sparsity (None: never faster at the highest)."""
    by_layer: dict[str, list[dict]] = {}
    for row in rows:
        by_layer.setdefault(row["layer"], []).append(row)
    found = {}
    for layer, layer_rows in by_layer.items():
        crossover = None
        for row in sorted(layer_rows, key=lambda r: r["sparsity"], reverse=True):
            if row["speedup"] <= 1:
                break
            crossover = row["sparsity"]
        found[layer] = crossover
    return found


def format_conv_table(rows: Sequence[dict]) -> str:
    """Layers down, sparsities across; each cell 'dense ms / sparse ms (speed-up)' and each
    layer's crossover; then the same grid of the multiply-add rates, 'sparse / dense GMAC/s':
    the kept weights' multiply-adds per second of the sparse kernel against dense's."""
    found = crossovers(rows)
    timings = layer_grid(rows, "layer", 24, lambda row: f"{row['dense_ms']:>8.3f} / "
                         f"{row['sparse_ms']:.3f} ({row['speedup']:.2f}x)",
                         ("crossover", lambda layer: "never" if found[layer] is None
                          else f"{found[layer]:g}"))
    rates = layer_grid(rows, "GMAC/s: sparse (kept weights) / dense", 17,
                       lambda row: f"{row['sparse_gmacs']:.1f} / {row['dense_gmacs']:.1f}")
    return timings + "\n\n" + rates


def layer_grid(rows: Sequence[dict], title: str, cell_width: int,
               cell: Callable[[dict], str],
               last: tuple[str, Callable[[str], str]] | None = None) -> str:
    """Layers down, sparsities across, ``cell(row)`` in each cell ('-' where none was
    measured); ``last``: the header and per-layer text of one more column."""
    sparsities = sorted({row["sparsity"] for row in rows})
    layers = list(dict.fromkeys(row["layer"] for row in rows))
    cells = {(row["layer"], row["sparsity"]): row for row in rows}
    width = max(len(layer) for layer in layers) if layers else 5
    header = f"{title:<{width}}  " + "  ".join(f"{f'sparsity {s:g}':>{cell_width}}"
                                                for s in sparsities)
    lines = [header + (f"  {last[0]}" if last else "")]
    for layer in layers:
        parts = [f"{'-':>{cell_width}}" if (layer, s) not in cells
                 else cell(cells[layer, s]).rjust(cell_width) for s in sparsities]
        lines.append(f"{layer:<{width}}  " + "  ".join(parts)
                     + (f"  {last[1](layer)}" if last else ""))
    return "\n".join(lines)
