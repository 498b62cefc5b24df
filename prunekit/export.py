"""Export a pruned run's model for inference, each masked conv on its faster kernel.

For every masked ``nn.Conv2d`` of the run's model, the dense conv (its weight masked) and its
``SparseConv2d`` are timed on the input that layer sees for the target input shape and device,
and the faster one is kept (``sparse_kernels=False`` keeps every layer dense). The result is
written as a ``torch.export`` program (``model.pt2``) that ``load_exported`` runs with prunekit's
kernels but without its training code, plus ``export.json``: per layer the sparsity, both
timings and the chosen kernel (with a sparse one's schedule), and the end-to-end latency before
and after.
"""
from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import ops
from .ops.conv_timing import time_dense_and_sparse
from .timing import interleaved_median_ms
from .data import NATIVE_SIZES
from .pipeline.outputs import check_out_dir, load_checkpoint
from .errors import PrunekitError, one_line
from .files import atomic_write, write_json
from .ops.sparse_conv import SparseConv2d

EXPORT_FOLDER = "export"
MODEL_FILE = "model.pt2"
REPORT_FILE = "export.json"


@dataclass
class LayerChoice:
    name: str
    shape: str
    sparsity: float
    dense_ms: float | None
    sparse_ms: float | None
    kernel: str                      # "sparse" or "dense"
    why: str = ""                    # why a layer stays dense without being timed
    schedule: str = ""               # a sparse layer's: how the kernel cuts its work


@dataclass
class KernelReport:
    run: str
    input_shape: list[int]
    device: str
    threads: int
    simd: str
    layers: list[LayerChoice] = field(default_factory=list)
    dense_ms: float = 0.0            # end to end: the masked model, every conv dense
    chosen_ms: float = 0.0           # end to end: the chosen kernels
    model_file: str | None = None

    @property
    def speedup(self) -> float:
        return self.dense_ms / self.chosen_ms

    def to_json(self) -> dict:
        return {**asdict(self), "speedup": round(self.speedup, 3),
                "sparse_layers": sum(layer.kernel == "sparse" for layer in self.layers)}


def export_run(run_dir: str | Path, *, sparse_kernels: bool = True,
               input_size: tuple[int, int] | None = None, batch: int = 1, device: str = "cpu",
               repeats: int = 20, out: str | Path | None = None,
               progress: Callable[[str], None] = lambda line: None) -> KernelReport:
    """Choose each masked conv's kernel, then write ``model.pt2`` and ``export.json`` into
    ``out`` (default ``RUN_DIR/export``). The exported model's outputs are checked against the
    masked model's before anything is written."""
    folder = Path(out) if out else Path(run_dir) / EXPORT_FOLDER
    check_out_dir(folder)  # before the timings, not after
    model, chosen, example, report = measure_run(
        run_dir, sparse_kernels=sparse_kernels, input_size=input_size, batch=batch,
        device=device, repeats=repeats, progress=progress)
    program = export_program(chosen, example)
    check_same_outputs(model, program.module(), example)
    atomic_write(folder / MODEL_FILE, lambda temporary: save_program(program, temporary))
    report.model_file = str(folder / MODEL_FILE)
    write_json(folder / REPORT_FILE, report.to_json())
    return report


def measure_run(run_dir: str | Path, *, sparse_kernels: bool = True,
                input_size: tuple[int, int] | None = None, batch: int = 1, device: str = "cpu",
                repeats: int = 20, progress: Callable[[str], None] = lambda line: None):
    """Time every masked conv of the run dense and sparse, and the whole model before and after
    the choice. Returns (masked model, model with the chosen kernels, example input, report)."""
    check_timing_request(device, batch, repeats)
    model, masks = load_run(run_dir, device)
    height, width = input_size or run_input_size(run_dir)
    example = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(0))
    example = example.to(device)
    report = KernelReport(run=str(run_dir), input_shape=list(example.shape), device=device,
                          threads=torch.get_num_threads(), simd=ops.simd_level())
    inputs = conv_inputs(model, example)
    for name, conv in masked_convs(model, masks):
        report.layers.append(choose_kernel(name, conv, masks[f"{name}.weight"], inputs[name],
                                           sparse_kernels, repeats))
        progress(f"{name}: {report.layers[-1].kernel}")
    chosen = with_chosen_kernels(model, masks, report.layers)
    dense_ms, chosen_ms = interleaved_median_ms([model, chosen], example, repeats)
    report.dense_ms, report.chosen_ms = round(dense_ms, 4), round(chosen_ms, 4)
    return model, chosen, example, report


def load_run(run_dir: str | Path, device: str) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The run's pruned model in eval mode (pruned weights zero) and its masks."""
    checkpoint = Path(run_dir) / "checkpoint.pt"
    if not Path(run_dir).is_dir():
        raise PrunekitError(f"run folder {str(run_dir)!r} does not exist")
    if not checkpoint.is_file():
        raise PrunekitError(f"{str(run_dir)!r} has no checkpoint.pt: is it a finished "
                            f"`prunekit run` folder?")
    try:
        model, masks = load_checkpoint(checkpoint, device)
        with torch.no_grad():
            for name, mask in masks.items():
                model.get_parameter(name).mul_(mask)
    except (KeyError, TypeError, AttributeError, RuntimeError) as exc:
        raise PrunekitError(f"{str(checkpoint)!r} is not a pruned run's checkpoint this version "
                            f"can rebuild ({type(exc).__name__}: {one_line(exc, 200)})") from exc
    return model.eval(), masks


def run_input_size(run_dir: str | Path) -> tuple[int, int]:
    """The image size the run trained on: its samples' (the report's ``data`` record), else
    its --image-size, else its dataset's usual size (reports written before the record)."""
    try:
        report = json.loads((Path(run_dir) / "report.json").read_text())
        config = report["config"]
        # the size the run's samples had (runs before the record: the size it asked for)
        size = (report.get("data") or {}).get("image_size") or config.get("image_size")
        dataset = config.get("dataset")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise PrunekitError(f"{str(run_dir)!r} has no readable report.json to take the input "
                            f"size from; pass --input-size HxW") from None
    if size:
        if (not isinstance(size, list) or len(size) != 2
                or not all(isinstance(v, int) and v >= 8 for v in size)):
            raise PrunekitError(f"the run's report.json has image_size {size!r}, not two "
                                "sizes of at least 8; pass --input-size HxW")
        return tuple(size)
    if isinstance(dataset, str) and dataset in NATIVE_SIZES:
        return NATIVE_SIZES[dataset]
    raise PrunekitError(f"the run's dataset {dataset!r} has no known image size; "
                        "pass --input-size HxW")


def check_timing_request(device: str, batch: int, repeats: int) -> None:
    """One clear error for a device, batch or repeat count that timings cannot use."""
    if batch < 1 or repeats < 1:
        raise PrunekitError(f"--batch and --repeats must be at least 1, got {batch} and "
                            f"{repeats}")
    if device not in ("cpu", "cuda"):
        raise PrunekitError(f"--device must be cpu or cuda, got {device!r}")
    if device == "cuda" and not (torch.cuda.is_available() and ops.cuda_compiled()):
        raise PrunekitError("--device cuda needs a CUDA GPU and prunekit built with CUDA")


def masked_convs(model: nn.Module, masks: dict[str, torch.Tensor]):
    """(name, conv) of every Conv2d whose weight has a mask, in model order."""
    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, nn.Conv2d) and f"{name}.weight" in masks]


def conv_inputs(model: nn.Module, example: torch.Tensor) -> dict[str, torch.Tensor]:
    """The input each Conv2d of ``model`` receives when the model runs on ``example``."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [module.register_forward_pre_hook(
                 lambda module, args, name=name: seen.setdefault(name, args[0].detach()))
             for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    try:
        with torch.no_grad():
            model(example)
    except RuntimeError as exc:
        raise PrunekitError(f"the model cannot run on a {'x'.join(map(str, example.shape))} "
                            f"input ({one_line(exc, 200)}); try another --input-size") from exc
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def choose_kernel(name: str, conv: nn.Conv2d, mask: torch.Tensor, x: torch.Tensor,
                  sparse_kernels: bool, repeats: int) -> LayerChoice:
    """The faster of the dense and the sparse form of ``conv`` on its input ``x``."""
    sparsity = round(1 - mask.float().mean().item(), 4)
    shape = describe(conv, x)
    if not sparse_kernels:
        return LayerChoice(name, shape, sparsity, None, None, "dense", "--sparse-kernels off")
    try:
        sparse = SparseConv2d.from_conv(conv, mask)
    except ValueError as exc:  # a layer SparseConv2d cannot take (groups, padding mode)
        return LayerChoice(name, shape, sparsity, None, None, "dense", str(exc))
    timing = time_dense_and_sparse(conv, sparse, x, repeats)
    kernel = "sparse" if timing.sparse_ms < timing.dense_ms else "dense"
    schedule = sparse.schedule(x) if kernel == "sparse" else ""
    return LayerChoice(name, shape, sparsity, round(timing.dense_ms, 6),
                       round(timing.sparse_ms, 6), kernel, schedule=schedule)


def describe(conv: nn.Conv2d, x: torch.Tensor) -> str:
    kh, kw = conv.kernel_size
    text = f"{kh}x{kw} {conv.in_channels}->{conv.out_channels} @{x.shape[-2]}x{x.shape[-1]}"
    if conv.stride != (1, 1):
        text += f" stride {conv.stride[0]}"
    if conv.dilation != (1, 1):
        text += f" dil {conv.dilation[0]}"
    return text


def with_chosen_kernels(model: nn.Module, masks: dict[str, torch.Tensor],
                        layers: list[LayerChoice]) -> nn.Module:
    """A copy of ``model`` whose layers chosen sparse are ``SparseConv2d``."""
    chosen = copy.deepcopy(model)
    for layer in layers:
        if layer.kernel == "sparse":
            conv = chosen.get_submodule(layer.name)
            chosen.set_submodule(layer.name,
                                 SparseConv2d.from_conv(conv, masks[f"{layer.name}.weight"]))
    return chosen.eval()


def save_program(program: torch.export.ExportedProgram, path: Path) -> None:
    with path.open("wb") as file:  # Python's file: a full disk is an OSError
        torch.export.save(program, file)


def export_program(model: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """``model`` as a torch.export program for inputs like ``example``, any batch size. Dropout
    layers, identities at inference, are left out of the program."""
    model = without_dropout(model)
    batch = torch.export.Dim("batch", min=1)
    if example.shape[0] == 1:  # traced at batch 1, the batch would be specialised to 1
        example = example.expand(2, *example.shape[1:])
    with torch.no_grad():
        model(example)  # sparse layers plan their taps for this input size, kept in the program
        return torch.export.export(model, (example,), dynamic_shapes=({0: batch},))


def without_dropout(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose dropout layers are identities (what they are in eval mode)."""
    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.modules.dropout._DropoutNd):
            model.set_submodule(name, nn.Identity())
    return model


def check_same_outputs(expected: nn.Module, got: nn.Module, example: torch.Tensor) -> None:
    # cuDNN may use TF32; the sparse kernel computes in float32, so compare with float32 convs
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        want, have = expected(example), got(example)
    for task, output in want.items():
        if not torch.allclose(have[task], output, rtol=1e-4, atol=1e-4):
            difference = (have[task] - output).abs().max().item()
            raise PrunekitError(f"the exported model's {task!r} output differs from the masked "
                                f"model's (max difference {difference:.3g}); nothing written")


def load_exported(path: str | Path) -> nn.Module:
    """The model ``export_run`` wrote, ready to call (prunekit's kernels are registered by
    importing prunekit.ops, which this module does)."""
    path = Path(path)
    if not path.is_file():
        raise PrunekitError(f"exported model {str(path)!r} does not exist")
    try:
        return torch.export.load(path).module()
    except Exception as exc:  # zip, pickle and torch errors alike: not an exported program
        raise PrunekitError(f"{str(path)!r} could not be loaded as an exported model "
                            f"({type(exc).__name__})") from exc


def format_report(report: KernelReport) -> str:
    """Per layer: sparsity, dense and sparse ms, the chosen kernel (a sparse one's schedule);
    then end to end."""
    width = max([len(layer.name) for layer in report.layers] + [5])
    shape_width = max([len(layer.shape) for layer in report.layers] + [5])
    lines = [f"{'layer':<{width}}  {'shape':<{shape_width}}  sparsity  dense ms  sparse ms  kernel"]
    for layer in report.layers:
        timings = ("       -          -" if layer.dense_ms is None
                   else f"{layer.dense_ms:8.3f}  {layer.sparse_ms:9.3f}")
        lines.append(f"{layer.name:<{width}}  {layer.shape:<{shape_width}}  {layer.sparsity:8.3f}"
                     f"  {timings}  {layer.kernel}" + (f" ({layer.why})" if layer.why else "")
                     + (f": {layer.schedule}" if layer.schedule else ""))
    sparse = sum(layer.kernel == "sparse" for layer in report.layers)
    lines.append(f"end to end, input {'x'.join(map(str, report.input_shape))} on "
                 f"{report.device} ({report.threads} threads, {report.simd}): dense "
                 f"{report.dense_ms:.2f} ms, chosen kernels {report.chosen_ms:.2f} ms "
                 f"({report.speedup:.2f}x; {sparse} of {len(report.layers)} convs sparse)")
    if report.model_file:
        lines.append(f"wrote {report.model_file}")
    return "\n".join(lines)
