"""Benchmark settings: a compact result table, torch details in the machine info, and a summary
per group of each method's median time against the group's baseline.

A benchmark names its ``method`` in ``extra_info`` and, optionally, the ``baseline`` method of its
group (default ``kernel``); the summary prints median(method) / median(baseline)."""
import os
import platform

os.environ.setdefault("PRUNEKIT_DISABLE_PLUGIN_AUTOLOAD", "1")

import pytest
import torch


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    # Only fill in what was not given on the command line.
    if getattr(config.option, "benchmark_columns", "absent") is None:
        config.option.benchmark_columns = ["median", "iqr", "mean", "min", "max", "rounds"]


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["torch"] = torch.__version__
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["cuda_device"] = (torch.cuda.get_device_name(0) if torch.cuda.is_available()
                                   else None)


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    groups = {}
    for bench in session.benchmarks:
        if bench.has_error or not bench.stats:
            continue
        info = bench.extra_info
        group = groups.setdefault(bench.group, {"baseline": info.get("baseline", "kernel")})
        group[info["method"]] = bench.stats.median
    write = terminalreporter.write_line
    write("")
    write(f"summary (median, ms; ratio = method median / baseline median); "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}")
    write(f"{'group':<34} {'method':<14} {'median ms':>10} {'ratio':>7}")
    for group, medians in groups.items():
        base = medians.pop("baseline")
        base_median = medians.get(base)
        for method, median in medians.items():
            ratio = f"{median / base_median:7.2f}" if base_median else f"{'-':>7}"
            write(f"{group:<34} {method:<14} {median * 1e3:10.2f} {ratio}")
