"""Task losses and metrics on hand-made predictions, and Delta_T."""
import math

import pytest
import torch

from prunekit.errors import UnknownNameError
from prunekit.pipeline.report import delta_t
from prunekit.tasks import DepthTask, NormalTask, SegmentationTask, build_tasks


def one_hot_logits(labels, num_classes):
    return torch.nn.functional.one_hot(labels, num_classes).permute(0, 3, 1, 2).float() * 10


def test_segmentation_metrics_ignore_unlabelled_pixels():
    task = SegmentationTask(3)
    target = torch.tensor([[[0, 0, 1, 255]]])
    predicted = torch.tensor([[[0, 1, 1, 2]]])
    meter = task.meter()
    meter.update(one_hot_logits(predicted, 3), target)
    metrics = meter.compute()
    assert metrics["pixel_acc"] == pytest.approx(2 / 3)
    # class 0: 1 / 2, class 1: 1 / 2; class 2 neither predicted on labelled pixels nor present
    assert metrics["miou"] == pytest.approx(0.5)
    loss = task.loss(one_hot_logits(target.clamp(max=2), 3), target)
    assert loss < 1e-3  # the 255 pixel would cost a lot if it were counted


def test_depth_loss_and_metrics_use_only_valid_pixels():
    task = DepthTask()
    target = torch.tensor([[[[1.0, 2.0, 0.0, 4.0]]]])
    prediction = torch.tensor([[[[1.0, 3.0, 9.0, 2.0]]]])
    assert float(task.loss(prediction, target)) == pytest.approx((0 + 1 + 2) / 3)
    meter = task.meter()
    meter.update(prediction, target)
    m = meter.compute()
    assert m["abs_err"] == pytest.approx(1.0)
    assert m["rel_err"] == pytest.approx((0 + 0.5 + 0.5) / 3)
    assert m["delta_1.25"] == pytest.approx(1 / 3)
    assert m["delta_1.25^2"] == pytest.approx(2 / 3)  # ratios 1, 1.5 and 2: 1.5 < 1.5625
    assert m["delta_1.25^3"] == pytest.approx(2 / 3)  # 2 > 1.953


def test_normal_loss_and_angle_metrics():
    task = NormalTask()
    target = torch.zeros(1, 3, 1, 3)
    target[0, 2] = 1.0                      # all pointing along z
    target[0, :, 0, 2] = 0.0                # last pixel has no reading
    angle = math.radians(20.0)
    prediction = torch.zeros(1, 3, 1, 3)
    prediction[0, 2, 0, 0] = 2.0            # same direction, other length: 0 degrees
    prediction[0, 0, 0, 1] = math.sin(angle)
    prediction[0, 2, 0, 1] = math.cos(angle)
    prediction[0, 0, 0, 2] = 1.0
    assert float(task.loss(prediction, target)) == pytest.approx((1 - math.cos(angle)) / 2)
    meter = task.meter()
    meter.update(prediction, target)
    m = meter.compute()
    assert m["mean_angle"] == pytest.approx(10.0, abs=1e-6)
    assert m["within_11.25"] == pytest.approx(0.5)
    assert m["within_22.5"] == pytest.approx(1.0)


def test_delta_t_signs_follow_the_metric_direction():
    tasks = {"depth": DepthTask()}
    base = {"depth": {"abs_err": 1.0, "rel_err": 0.5, "delta_1.25": 0.5, "delta_1.25^2": 0.8,
                      "delta_1.25^3": 0.9}}
    better = {"depth": {"abs_err": 0.9, "rel_err": 0.45, "delta_1.25": 0.55,
                        "delta_1.25^2": 0.88, "delta_1.25^3": 0.99}}
    result = delta_t(better, base, tasks)
    assert result["per_task"]["depth"] == pytest.approx(10.0)
    assert result["overall"] == pytest.approx(10.0)
    worse = delta_t(base, better, tasks)
    assert worse["overall"] < 0


def test_unknown_task_name():
    class Dataset:
        num_classes = 13

    with pytest.raises(UnknownNameError, match="unknown task 'normals'.*did you mean 'normal'"):
        build_tasks(["seg", "normals"], Dataset())
