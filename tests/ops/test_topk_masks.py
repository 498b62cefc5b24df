"""The radix top-k over many tensors (prunekit.ops.topk_masks) against its pure-torch reference.

Every comparison is exact: kept sets and thresholds equal element for element, for both scopes,
every criterion and every dtype. Inputs are built on the CPU from seeded generators and moved to
the device under test, so a CUDA run sees the same data. On the CPU, groups above 65536 elements
go through the histogram passes, smaller ones through the direct selection, and groups from 2^20
elements first try a key range guessed from a strided sample; every path is tested, the sampled
one also with inputs that mislead its sample. Tests of groups that span chunks run with both
builds of the CPU loops (AVX2 and default; the `cpu_build` fixture).
"""
import math
import sys

import pytest
import torch

from prunekit import ops
from prunekit.ops import criterion_scores, topk_masks, topk_masks_reference

from helpers import CUDA, CUDA_SKIP_REASON, DEVICES
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
KINDS = ["normal", "heavy ties", "mostly zero", "all equal", "lowest mantissa bits",
         "inf and signed zeros"]
CRITERIA = ["magnitude", "snip", "gradflow"]
HISTOGRAM_PATH = 65_537  # a group larger than one chunk is histogrammed
SAMPLED_PATH = 1 << 20  # a group this large first tries a range from a strided sample


def values(kind, n, generator):
    if kind == "normal":
        return torch.randn(n, generator=generator)
    if kind == "heavy ties":
        return torch.randint(0, 3, (n,), generator=generator).float()
    if kind == "mostly zero":
        return torch.where(torch.rand(n, generator=generator) < 0.9, 0.0,
                           torch.rand(n, generator=generator))
    if kind == "all equal":
        return torch.full((n,), 0.25)
    if kind == "lowest mantissa bits":
        return 1.0 + torch.randint(0, 4, (n,), generator=generator) * 2.0 ** -23
    t = torch.where(torch.rand(n, generator=generator) < 0.2, math.inf,
                    torch.randn(n, generator=generator))
    t[: n // 3] = -0.0
    t[n // 3: n // 2] = 0.0
    t[-1:] = -math.inf
    return t


def random_tensors(kind, generator, dtype, large=False):
    count = int(torch.randint(1, 7, (), generator=generator))
    high = 40_000 if large else 400
    tensors = []
    for _ in range(count):
        n = int(torch.randint(0, high, (), generator=generator))
        t = values(kind, n, generator).to(dtype)
        tensors.append(t.reshape(2, -1) if n % 2 == 0 and n else t)
    return tensors


def some_counts(tensors, scope, generator):
    """Edge and random counts: (k, keep_ratio) pairs for the scope."""
    sizes = [t.numel() for t in tensors]
    if scope == "global":
        total = sum(sizes)
        return [(k, None) for k in {0, 1, total, int(torch.randint(0, total + 1, (),
                                                                    generator=generator))}
                if k <= total] + [(None, 0.37)]
    random_counts = [int(torch.randint(0, n + 1, (), generator=generator)) for n in sizes]
    return [(random_counts, None), ([0] * len(sizes), None), (sizes, None), (None, 0.5)]


def assert_matches_reference(inputs, k=None, keep_ratio=None, scope="global", criterion="score",
                             grads=None, device="cpu"):
    inputs = [t.to(device) for t in inputs]
    grads = None if grads is None else [g.to(device) for g in grads]
    got = topk_masks(inputs, k, keep_ratio=keep_ratio, scope=scope, criterion=criterion,
                     grads=grads)
    want = topk_masks_reference(inputs, k, keep_ratio=keep_ratio, scope=scope,
                                criterion=criterion, grads=grads)
    assert len(got.masks) == len(inputs)
    for g, w, t in zip(got.masks, want.masks, inputs):
        assert g.dtype == torch.bool and g.shape == t.shape and g.device == t.device
        assert torch.equal(g.cpu(), w.cpu())
    assert got.thresholds.dtype == torch.float64
    assert torch.equal(got.thresholds.cpu(), want.thresholds.cpu())
    return got


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_scores_kept_sets_and_thresholds_equal_the_reference(kind, dtype, scope, device):
    generator = torch.Generator().manual_seed(10 * KINDS.index(kind) + DTYPES.index(dtype))
    for trial in range(12):
        tensors = random_tensors(kind, generator, dtype, large=trial < 2)
        for k, keep_ratio in some_counts(tensors, scope, generator):
            assert_matches_reference(tensors, k, keep_ratio, scope, device=device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("criterion", CRITERIA)
def test_fused_criteria_equal_the_reference(criterion, dtype, scope, device):
    generator = torch.Generator().manual_seed(CRITERIA.index(criterion) + 7 * DTYPES.index(dtype))
    for trial, kind in enumerate(["normal", "heavy ties", "mostly zero", "lowest mantissa bits"]):
        weights = random_tensors(kind, generator, dtype, large=trial == 0)
        grads = [values("mostly zero" if trial % 2 else "normal", w.numel(), generator)
                 .to(dtype).reshape(w.shape) for w in weights]
        if criterion == "magnitude":
            grads = None
        for k, keep_ratio in some_counts(weights, scope, generator):
            assert_matches_reference(weights, k, keep_ratio, scope, criterion, grads, device)


def test_fused_criteria_rank_the_scorers_formulas():
    w = torch.tensor([3.0, -2.0, 0.5, -4.0])
    g = torch.tensor([1.0, -1.0, 6.0, 0.1])
    kept = {c: topk_masks([w], 2, criterion=c, grads=None if c == "magnitude" else [g])
            for c in CRITERIA}
    assert kept["magnitude"].masks[0].tolist() == [True, False, False, True]  # 3, 2, .5, 4
    assert kept["snip"].masks[0].tolist() == [True, False, True, False]       # 3, 2, 3, .4
    assert kept["gradflow"].masks[0].tolist() == [True, True, False, False]   # 9, 4, 1.5, 1.6
    assert [kept[c].thresholds.item() for c in CRITERIA] == [3.0, 3.0, 4.0]


def test_fused_criteria_are_the_scorers_own_scores():
    """Fusing must not change a mask: the op scores exactly as the scorer plugins do (float32)."""
    from prunekit_plugins.gradflow import GradFlowScorer
    from prunekit_plugins.snip import SnipScorer

    generator = torch.Generator().manual_seed(5)
    w, g = torch.randn(10_000, generator=generator), torch.randn(10_000, generator=generator)
    assert torch.equal(criterion_scores(w, g, "snip"), SnipScorer.criterion(w, g))
    assert torch.equal(criterion_scores(w, g, "gradflow"), GradFlowScorer.criterion(w, g))
    assert torch.equal(criterion_scores(w, None, "magnitude"), w.abs())


def test_the_default_build_can_be_forced_and_restored():
    best = ops.simd_level()
    assert best in ("avx2", "default")
    with ops.default_simd():
        assert ops.simd_level() == "default"
        with ops.default_simd():
            assert ops.simd_level() == "default"
        assert ops.simd_level() == "default"  # the inner block restores what it found
    assert ops.simd_level() == best


def test_the_extension_runs_its_parallel_loops_on_torch_threads():
    # without OpenMP, at::parallel_for in the extension silently runs on one thread
    assert ops._C.openmp_compiled() == sys.platform.startswith("linux")


@pytest.mark.usefixtures("cpu_build")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_a_million_scores_in_fifty_tensors_with_ties(scope, device):
    generator = torch.Generator().manual_seed(0)
    tensors = [torch.randint(0, 1000, (20_000,), generator=generator).float() / 7
               for _ in range(50)]
    for ratio in (0.1, 0.5, 0.9):
        got = assert_matches_reference(tensors, keep_ratio=ratio, scope=scope, device=device)
        assert sum(int(m.sum()) for m in got.masks) == round(ratio * 1_000_000)


@pytest.mark.usefixtures("cpu_build")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", [65_535, 65_536, HISTOGRAM_PATH])
def test_group_sizes_around_the_chunk_take_either_path(n, device):
    tensor = torch.randint(0, 5, (n,), generator=torch.Generator().manual_seed(n)).float()
    for k in (1, n // 3, n - 1, n):
        assert_matches_reference([tensor], k, device=device)
        assert_matches_reference([tensor[: n // 2], tensor[n // 2:]], [k // 2, k // 3],
                                 scope="layer", device=device)


@pytest.mark.usefixtures("cpu_build")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_large_groups_equal_the_reference(kind, dtype, device):
    """Sampled range when the sample brackets the k-th score; exact passes when ties crowd it."""
    generator = torch.Generator().manual_seed(KINDS.index(kind) + 11 * DTYPES.index(dtype))
    tensors = [values(kind, n, generator).to(dtype) for n in (SAMPLED_PATH - 999, 70_001, 3)]
    total = sum(t.numel() for t in tensors)
    for k in (1, int(torch.randint(0, total, (), generator=generator)), total // 2, total - 1):
        assert_matches_reference(tensors, k, device=device)
    assert_matches_reference(tensors, [SAMPLED_PATH // 10, 7, 1], scope="layer", device=device)


def sampled_positions(n):
    """Where the CPU's strided sample looks: the first 64 of every 8192 of each 65536-chunk."""
    return (torch.arange(n) % 65_536) % 8_192 < 64


@pytest.mark.usefixtures("cpu_build")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", ["sample too low", "sample too high", "range too crowded"])
def test_a_misleading_sample_still_gives_exact_masks(case, device):
    n = 2 * SAMPLED_PATH
    generator = torch.Generator().manual_seed(1)
    sampled, rest = torch.rand(n, generator=generator), torch.rand(n, generator=generator)
    if case == "sample too low":  # the range falls below the k-th score
        rest += 2
    elif case == "sample too high":  # ... above it
        sampled += 2
    else:  # nearly every score lies in the range: the candidates exceed their cap
        rest.fill_(0.5)
    scores = torch.where(sampled_positions(n), sampled, rest)
    for ratio in (0.1, 0.5, 0.9):
        got = assert_matches_reference([scores], keep_ratio=ratio, device=device)
        assert int(got.masks[0].sum()) == round(ratio * n)


def test_ties_across_tensors_go_to_the_earlier_tensor_then_the_lower_index():
    a, b = torch.tensor([1.0, 2.0, 1.0]), torch.tensor([1.0, 3.0])
    got = topk_masks([a, b], 3)  # 3.0, 2.0, then the first 1.0: a[0]
    assert got.masks[0].tolist() == [True, True, False] and got.masks[1].tolist() == [False, True]
    assert got.thresholds.tolist() == [1.0]


def test_layer_scope_ranks_each_tensor_on_its_own():
    a, b = torch.tensor([5.0, 6.0, 7.0]), torch.tensor([1.0, 0.0])
    got = topk_masks([a, b], [1, 1], scope="layer")
    assert got.masks[0].tolist() == [False, False, True] and got.masks[1].tolist() == [True, False]
    assert got.thresholds.tolist() == [7.0, 1.0]
    by_ratio = topk_masks([a, b], keep_ratio=0.5, scope="layer")  # round(1.5) = 2, round(1.0) = 1
    assert [int(m.sum()) for m in by_ratio.masks] == [2, 1]


def test_mixed_dtypes_are_read_at_the_widest():
    half = torch.tensor([0.5, 0.25], dtype=torch.float16)
    single = torch.tensor([0.3, 0.1], dtype=torch.float32)
    got = topk_masks([half, single], 2)
    assert got.masks[0].tolist() == [True, False] and got.masks[1].tolist() == [True, False]


def test_empty_inputs_and_tensors():
    nothing = topk_masks([], 0)
    assert nothing.masks == [] and nothing.thresholds.tolist() == [math.inf]
    empty = torch.empty(0)
    got = topk_masks([empty, torch.tensor([2.0, 1.0]), empty], 1)
    assert [m.shape for m in got.masks] == [(0,), (2,), (0,)]
    assert got.masks[1].tolist() == [True, False]
    layer = topk_masks([empty, torch.tensor([2.0, 1.0])], [0, 2], scope="layer")
    assert layer.thresholds.tolist() == [math.inf, 1.0]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", [5, HISTOGRAM_PATH])
def test_nan_names_the_first_input_and_index(n, device):
    later_group = torch.zeros(n)
    later_group[3] = math.nan
    earlier = torch.tensor([0.0, 1.0, math.nan])
    inputs = [x.to(device) for x in (torch.ones(4), earlier, later_group)]
    for scope, k in (("global", 1), ("layer", [1, 1, 1]), ("layer", [1, 0, 0])):
        with pytest.raises(RuntimeError, match=r"NaN score \(criterion score\) in inputs\[1\] "
                                               r"at flat index 2"):
            topk_masks(inputs, k, scope=scope)


def test_nan_outside_the_sample_of_a_large_group_is_named():
    scores = torch.rand(SAMPLED_PATH + 5, generator=torch.Generator().manual_seed(2))
    scores[5_000] = -math.nan
    assert not sampled_positions(scores.numel())[5_000]
    for k in (1, scores.numel() // 2):
        with pytest.raises(RuntimeError, match=r"in inputs\[1\] at flat index 5000"):
            topk_masks([torch.ones(3), scores], k)


def test_nan_made_by_the_criterion_is_named():
    weights, grads = torch.tensor([1.0, 0.0]), torch.tensor([2.0, math.inf])  # 0 * inf
    with pytest.raises(RuntimeError, match=r"criterion snip\) in inputs\[0\] at flat index 1"):
        topk_masks([weights], 1, criterion="snip", grads=[grads])


@pytest.mark.parametrize("k", [-1, 6])
def test_k_out_of_range_raises(k):
    with pytest.raises(RuntimeError, match="expected 0 <= k <= 5"):
        topk_masks([torch.ones(2), torch.ones(3)], k)
    with pytest.raises(RuntimeError, match="expected 0 <= k <= 3 \\(the elements of group 1\\)"):
        topk_masks([torch.ones(2), torch.ones(3)], [1, k if k < 0 else 4], scope="layer")


def test_inputs_are_not_modified_and_views_work():
    base = torch.randn(6, 8)
    view = base.t()  # not contiguous
    before = view.clone()
    assert_matches_reference([view, torch.randn(5)], 17)
    assert_matches_reference([view], 9, criterion="snip", grads=[base.t() * 2])
    assert torch.equal(view, before)


@pytest.mark.parametrize("call, message", [
    (lambda x: topk_masks([x.long()], 1), "floating-point"),
    (lambda x: topk_masks([x], 1, keep_ratio=0.5), "exactly one of k and keep_ratio"),
    (lambda x: topk_masks([x]), "exactly one of k and keep_ratio"),
    (lambda x: topk_masks([x], keep_ratio=1.5), r"keep_ratio must lie in \[0, 1\]"),
    (lambda x: topk_masks([x], [1]), "global scope takes one count"),
    (lambda x: topk_masks([x], 1, scope="layer"), "layer scope takes one count per input"),
    (lambda x: topk_masks([x, x], [1], scope="layer"), "layer scope takes one count per input"),
    (lambda x: topk_masks([x], 1, scope="row"), "scope must be one of global, layer"),
    (lambda x: topk_masks([x], 1, criterion="taylor"), "criterion must be one of"),
    (lambda x: topk_masks([x], 1, criterion="snip"), "snip needs one gradient per input"),
    (lambda x: topk_masks([x], 1, grads=[x]), "score takes no gradients"),
    (lambda x: topk_masks([x], 1, criterion="gradflow", grads=[x[:2]]), r"expected grads\[0\]"),
])
def test_bad_arguments_raise_clearly(call, message):
    with pytest.raises((ValueError, RuntimeError), match=message):
        call(torch.ones(3))


@pytest.mark.skipif(not CUDA, reason=CUDA_SKIP_REASON)
def test_cuda_agrees_with_cpu_over_many_chunks_and_groups():
    """CUDA: 3M elements in 60 inputs of odd sizes, heavy ties, both scopes, every criterion."""
    generator = torch.Generator().manual_seed(3)
    weights = [torch.randint(-3, 4, (int(n),), generator=generator).float() / 4
               for n in torch.randint(1, 100_000, (60,), generator=generator)]
    grads = [torch.randint(-2, 3, w.shape, generator=generator).float() for w in weights]
    for criterion in ["score"] + CRITERIA:
        g = grads if criterion in ("snip", "gradflow") else None
        for scope in ("global", "layer"):
            cpu = topk_masks(weights, keep_ratio=0.3, scope=scope, criterion=criterion, grads=g)
            cuda = topk_masks([w.cuda() for w in weights], keep_ratio=0.3, scope=scope,
                              criterion=criterion, grads=None if g is None else
                              [x.cuda() for x in g])
            assert all(torch.equal(a, b.cpu()) for a, b in zip(cpu.masks, cuda.masks))
            assert torch.equal(cpu.thresholds, cuda.thresholds.cpu())
