"""Option parsers, output helpers and the options ``run`` and ``compare`` share."""
from __future__ import annotations

import dataclasses

import click
from click.core import ParameterSource

from ..errors import PrunekitError
from ..pipeline.config_file import find_preset, parse, read_config_file
from ..pipeline.config import QUICK, RunConfig

DEFAULTS = {f.name: f.default for f in dataclasses.fields(RunConfig)}


def comma_list(ctx, param, value):
    if value is None:
        return None
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if not items:
        raise click.BadParameter("expected a comma-separated list")
    return items


def learning_rates(ctx, param, value):
    try:
        rates = tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected a number or a comma-separated list such as "
                                 f"1e-3,5e-4,1e-4, got {value!r}")
    return rates


def image_size(ctx, param, value):
    if value is None:
        return None
    try:
        height, width = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"expected HEIGHTxWIDTH such as 64x80, got {value!r}")
    if height < 8 or width < 8:
        raise click.BadParameter(f"images must be at least 8x8, got {value!r}")
    return height, width


def float_list(ctx, param, value):
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {value!r}")


def echo_err(message: str) -> None:
    click.echo(f"prunekit: {message}", err=True)


def options(*decorators):
    """Apply click options in the order they are listed (top to bottom in --help)."""
    def apply(command):
        for decorator in reversed(decorators):
            command = decorator(command)
        return command
    return apply


METHOD_OPTIONS = options(
    click.option("--mode", default=DEFAULTS["mode"], show_default=True,
                 help="static, pretrained, dynamic or iterative (see docs/methods.md)."),
    click.option("--arbiter", default=DEFAULTS["arbiter"], show_default=True,
                 help="Arbiter merging per-task masks of shared tensors."),
    click.option("--thresholder", default=None,
                 help="Thresholder turning saliency into masks [default: topk; erk in dynamic "
                      "mode]."),
    click.option("--scope", default=None,
                 help="Thresholder scope: global or layer [default: the thresholder's]."),
    click.option("--sparsity", type=float, default=DEFAULTS["sparsity"], show_default=True,
                 help="Fraction of prunable weights to remove, in (0, 1)."),
    click.option("--pattern", default=None, metavar="N:M",
                 help="Semi-structured sparsity: keep N of every M consecutive weights along "
                      "each output row's reduction (2:4 runs in hardware on recent GPUs); "
                      "replaces --sparsity and the thresholder (see docs/methods.md)."),
    click.option("--uncovered", default=DEFAULTS["uncovered"], show_default=True,
                 help="With --pattern, tensors it cannot cover (reduction length not a multiple "
                      "of M): dense, or unstructured (the same share kept by plain top-k)."),
    click.option("--compensate/--no-compensate", default=DEFAULTS["compensate"],
                 show_default=True,
                 help="Adjust the per-task keep ratio so the merged model hits --sparsity."),
    click.option("--metric", "metrics", callback=comma_list, default=",".join(DEFAULTS["metrics"]),
                 show_default=True,
                 help="Comma-separated metric plugins comparing each pair of tasks' masks "
                      "(report.json task_overlap; per-task scorers)."),
)

DATA_AND_TRAINING_OPTIONS = options(
    click.option("--tasks", callback=comma_list, default=",".join(DEFAULTS["tasks"]),
                 show_default=True,
                 help="Comma-separated tasks: seg, depth, normal; keypoint and edge (taskonomy)."),
    click.option("--model", default=DEFAULTS["model"], show_default=True,
                 help="deeplab-resnet34, deeplab-resnet50, vgg16, mobilenetv2, or your own "
                      "builder as MODULE:FUNCTION or FILE.py:FUNCTION (see docs/cli.md)."),
    click.option("--width", type=float, default=DEFAULTS["width"], show_default=True,
                 help="Channel width multiplier of the model."),
    click.option("--dataset", default=DEFAULTS["dataset"], show_default=True,
                 help="synthetic (embedded, generated on the fly), nyuv2, nyuv2-40, cityscapes, "
                      "cityscapes-7 or taskonomy (see docs/data.md)."),
    click.option("--data-root", default=None,
                 help="Dataset folder (every dataset but synthetic)."),
    click.option("--image-size", callback=image_size, default=None,
                 help="HEIGHTxWIDTH of the images [default: the dataset's, 64x80 for synthetic]."),
    click.option("--val-samples", type=int, default=DEFAULTS["val_samples"], show_default=True,
                 help="Validation samples to evaluate on (0: the whole split)."),
    click.option("--iterations", type=int, default=DEFAULTS["iterations"], show_default=True,
                 help="Training steps (sparse training, or dense training before pruning)."),
    click.option("--score-batches", type=int, default=DEFAULTS["score_batches"],
                 show_default=True, help="Batches whose saliency is summed."),
    click.option("--score-batch-size", type=int, default=None,
                 help="Samples per scoring batch [default: --batch-size]."),
    click.option("--score-resolution", default=DEFAULTS["score_resolution"], show_default=True,
                 help="Where scoring losses compare prediction and target: input (the model's "
                      "upsampled prediction) or output (each head's own output, targets "
                      "shrunk by nearest neighbour, as the DiSparse code scores)."),
    click.option("--batch-size", type=int, default=DEFAULTS["batch_size"], show_default=True),
    click.option("--workers", type=int, default=DEFAULTS["workers"], show_default=True,
                 help="Data-loading processes (0: load in the main process)."),
    click.option("--augment", is_flag=True, default=DEFAULTS["augment"],
                 help="Augment training samples: random scale in [0.5, 1.5], crop back to size, "
                      "left-right flip (normals' x negated); see docs/data.md."),
    click.option("--lr", callback=learning_rates, default=str(DEFAULTS["lr"]),
                 show_default=True,
                 help="Adam learning rate (scheduled by --lr-schedule); with "
                      "--retrain-from-scratch a comma-separated sweep such as 1e-3,5e-4,1e-4 for "
                      "the retraining (the first value trains the dense model)."),
    click.option("--lr-schedule", default=DEFAULTS["lr_schedule"], show_default=True,
                 help="cosine (decayed to zero over each training phase) or step (multiplied "
                      "by --lr-step-factor every --lr-step-every steps of each phase)."),
    click.option("--lr-step-every", type=int, default=None, metavar="N",
                 help="--lr-schedule step: steps between decays."),
    click.option("--lr-step-factor", type=float, default=None, metavar="F",
                 help="--lr-schedule step: what each decay multiplies the learning rate by."),
    click.option("--weight-decay", type=float, default=DEFAULTS["weight_decay"],
                 show_default=True,
                 help="Adam's weight decay on the model's weights in every training phase "
                      "(learned thresholds keep --theta-decay)."),
    click.option("--task-loss-weights", callback=comma_list, default=None,
                 metavar="TASK=W,...",
                 help="Fixed weights of the training losses, such as seg=1,normal=20 "
                      "[default: every task 1]; with --task-weighting adaptive they multiply "
                      "the adaptive weights. Scoring losses stay unweighted."),
    click.option("--seed", type=int, default=DEFAULTS["seed"], show_default=True),
    click.option("--device", default=DEFAULTS["device"], show_default=True, help="cpu or cuda."),
)

MODE_OPTIONS = options(
    click.option("--init-checkpoint", default=None,
                 help="pretrained/iterative: prune these weights (a checkpoint.pt) instead of "
                      "training dense first."),
    click.option("--finetune-iterations", type=int, default=None,
                 help="pretrained/iterative: fine-tuning steps after each pruning "
                      "[default: iterations / 2]."),
    click.option("--finetune-lr", type=float, default=None,
                 help="pretrained/iterative: fine-tuning learning rate [default: lr / 10]."),
    click.option("--prune-rounds", type=int, default=DEFAULTS["prune_rounds"], show_default=True,
                 help="iterative: prune-and-fine-tune rounds to reach --sparsity."),
    click.option("--rewind", is_flag=True,
                 help="iterative: reset surviving weights to their initial values each round."),
    click.option("--update-interval", type=int, default=DEFAULTS["update_interval"],
                 show_default=True, help="dynamic: steps between drop-and-grow updates."),
    click.option("--update-end", type=float, default=DEFAULTS["update_end"], show_default=True,
                 help="dynamic: share of training after which the masks stay fixed."),
    click.option("--drop-fraction", type=float, default=DEFAULTS["drop_fraction"],
                 show_default=True,
                 help="dynamic: share of active weights dropped at step 0, cosine-decayed."),
    click.option("--theta-init", type=float, default=DEFAULTS["theta_init"], show_default=True,
                 help="soft-threshold: initial theta of every threshold sigmoid(theta)."),
    click.option("--theta-lr", type=float, default=DEFAULTS["theta_lr"], show_default=True,
                 help="soft-threshold: learning rate of the thresholds."),
    click.option("--theta-decay", type=float, default=DEFAULTS["theta_decay"], show_default=True,
                 help="soft-threshold: L2 decay on theta, which raises the thresholds."),
    click.option("--task-weighting", default=DEFAULTS["task_weighting"], show_default=True,
                 help="fixed (every task loss weighs 1) or adaptive: AdapMTL's weights from "
                      "the inverse loss fluctuation over --window steps."),
    click.option("--window", type=int, default=DEFAULTS["window"], show_default=True,
                 help="adaptive task weighting: per-task losses averaged."),
    click.option("--params-ratio", type=float, default=None,
                 help="structured: share of the whole model's parameters to keep [default: "
                      "1 - sparsity of the weights the scorer scores]."),
    click.option("--prune-interval", type=int, default=DEFAULTS["prune_interval"],
                 show_default=True,
                 help="structured: training steps whose filter scores are summed before each "
                      "removal."),
    click.option("--filters-per-prune", type=int, default=None,
                 help="structured: channels removed per round [default: 5% of the candidates]."),
    click.option("--retrain-from-scratch", is_flag=True,
                 help="structured: re-initialise the pruned model and train it for --iterations "
                      "at each --lr, keeping the best by --select-metric."),
    click.option("--select-metric", default=DEFAULTS["select_metric"], show_default=True,
                 help="structured: delta_t (against the dense model) or TASK.METRIC such as "
                      "seg.miou, measured on training samples held out of the sweep."),
    click.option("--quick", is_flag=True,
                 help="Tiny settings that finish in seconds; explicit options still win."),
    click.option("--progress/--no-progress", default=True, show_default=True,
                 help="Progress bars on stderr."),
)


def preset_option(command):
    """``--preset NAME`` for a command whose presets hold its own options (similarity, group)."""
    return click.option("--preset", default=None, metavar="NAME",
                        help="A shipped paper configuration (see `prunekit presets`); options "
                             "typed here win.")(command)


def preset_options(ctx, name: str | None) -> dict:
    """The settings of the shipped preset ``name`` for ``ctx``'s command, keyed by parameter
    name; {} without a preset. A key the command has no option for is an error."""
    if name is None:
        return {}
    preset = find_preset(name, ctx.command.name)
    parameters = {option.lstrip("-").replace("-", "_"): parameter.name
                  for parameter in ctx.command.params for option in parameter.opts
                  if option.startswith("--")}
    settings = {}
    for key, value in parse(preset.path).items():
        key = key.replace("-", "_")
        if key not in parameters:
            raise PrunekitError(f"preset {name!r}: prunekit {ctx.command.name} has no option "
                                f"--{key.replace('_', '-')}")
        settings[parameters[key]] = tuple(value) if isinstance(value, list) else value
    return settings


def given_options(ctx, options: dict) -> dict:
    """The options the user typed (not left at their defaults)."""
    return {name: value for name, value in options.items()
            if ctx.get_parameter_source(name) != ParameterSource.DEFAULT}


def config_from(ctx, quick: bool, options: dict, config_file: str | None = None) -> RunConfig:
    """Defaults, then --quick's settings, then the --config file's, then what the user typed."""
    given = given_options(ctx, options)
    if "lr" in given:  # one rate, or a retraining sweep whose first rate trains the rest
        rates = given.pop("lr")
        given["lr"] = rates[0]
        if len(rates) > 1:
            given["retrain_lrs"] = rates
    from_file = read_config_file(config_file) if config_file else {}
    return RunConfig(**{**DEFAULTS, **(QUICK if quick else {}), **from_file, **given})
