"""prunekit.ops.topk_mask (the C++/CUDA op) against topk_mask_reference (the pure-torch oracle).

Every comparison is exact: the two masks must be equal element for element. Inputs are built on
the CPU from a fixed-seed torch.Generator and then moved to the device under test, so a CUDA run
sees the very same data as the CPU run.

Contract under test: exactly k elements kept, the k largest; ties at the threshold go to the lower
flat (row-major) index; -0.0 == 0.0; +inf above every finite value, -inf below; NaN, k outside
[0, numel] and non-floating dtypes raise.
"""
import math

import pytest
import torch

from prunekit.ops import topk_mask, topk_mask_reference

from helpers import CUDA, CUDA_SKIP_REASON, DEVICES
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["f64", "f32", "f16", "bf16"]

INF = float("inf")


# ---------------------------------------------------------------------------------------------
# helpers


def gen(seed):
    return torch.Generator().manual_seed(seed)


def k_edges(n):
    """k = 0, 1, n-1, n and two interior values, deduplicated and within [0, n]."""
    return sorted({k for k in (0, 1, n - 1, n, n // 2, (n * 3) // 10) if 0 <= k <= n})


def ulp_values(n, dtype, g):
    """Values one to a few ULPs apart around a few bases, built with torch.nextafter."""
    bases = torch.tensor([1.0, -3.0, 0.0, 1e-3], dtype=dtype)
    steps = 4
    ladder = [bases]
    for _ in range(steps):
        ladder.append(torch.nextafter(ladder[-1], torch.full_like(bases, INF)))
    for _ in range(steps):
        ladder.insert(0, torch.nextafter(ladder[0], torch.full_like(bases, -INF)))
    pool = torch.cat(ladder)  # 4 * (2 * steps + 1) distinct values, neighbours one ULP apart
    return pool[torch.randint(0, pool.numel(), (n,), generator=g)]


def make_values(kind, n, dtype, g):
    """A flat CPU tensor of n scores of `dtype`, of one adversarial `kind`."""
    if kind == "randn":
        return torch.randn(n, generator=g, dtype=torch.float64).to(dtype)
    if kind == "ties012":
        return torch.randint(0, 3, (n,), generator=g).to(dtype)
    if kind == "all_equal":
        return torch.full((n,), 0.75, dtype=dtype)
    if kind == "mostly_zeros":
        x = torch.zeros(n, dtype=torch.float64)
        hot = torch.rand(n, generator=g) < 0.05
        x[hot] = torch.randn(int(hot.sum()), generator=g, dtype=torch.float64)
        return x.to(dtype)
    if kind == "ulp":
        return ulp_values(n, dtype, g)
    if kind == "inf_mixed":
        x = torch.randn(n, generator=g, dtype=torch.float64)
        r = torch.rand(n, generator=g)
        x[r < 0.1] = INF
        x[(r >= 0.1) & (r < 0.2)] = -INF
        return x.to(dtype)
    if kind == "negative":
        return (-torch.rand(n, generator=g, dtype=torch.float64) * 100 - 1).to(dtype)
    if kind == "signed_zeros":
        # -0.0 and 0.0 (equal), with a few +-1 around them; the zeros straddle the threshold.
        choice = torch.randint(0, 6, (n,), generator=g)
        x = torch.zeros(n, dtype=torch.float64)
        x[choice == 1] = -0.0
        x[choice == 2] = -0.0
        x[choice == 4] = 1.0
        x[choice == 5] = -1.0
        return x.to(dtype)
    raise ValueError(kind)


KINDS = ["randn", "ties012", "all_equal", "mostly_zeros", "ulp", "inf_mixed", "negative",
         "signed_zeros"]


def assert_matches_reference(x, k):
    got = topk_mask(x, k)
    want = topk_mask_reference(x.cpu(), k)
    assert got.dtype == torch.bool
    assert got.shape == x.shape
    assert got.device == x.device
    got = got.cpu()
    assert int(got.sum()) == k, f"kept {int(got.sum())} elements, expected k = {k}"
    if not torch.equal(got, want):
        diff = (got != want).reshape(-1).nonzero().reshape(-1)
        flat = x.reshape(-1).cpu()
        first = diff[:5].tolist()
        raise AssertionError(
            f"mask differs from the reference at {diff.numel()} flat indices (first {first}); "
            f"values there {flat[first].tolist()}, kernel {got.reshape(-1)[first].tolist()}, "
            f"reference {want.reshape(-1)[first].tolist()}; shape {tuple(x.shape)}, "
            f"dtype {x.dtype}, k {k}")
    return got


def ties_split(x, k):
    """Whether the k-th largest value also occurs outside the top k (so the tie rule matters)."""
    flat = x.reshape(-1).cpu().double() + 0.0
    if k == 0 or k == flat.numel():
        return False
    ordered = torch.sort(flat, descending=True).values
    return bool(ordered[k - 1] == ordered[k])


# ---------------------------------------------------------------------------------------------
# hand-checked cases: they pin the contract itself, not only agreement with the reference


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
class TestHandChecked:
    def check(self, values, k, expected, device, dtype):
        x = torch.tensor(values, dtype=dtype, device=device)
        got = topk_mask(x, k).cpu().tolist()
        assert got == expected
        assert topk_mask_reference(x.cpu(), k).tolist() == expected

    def test_ties_go_to_lower_index(self, device, dtype):
        self.check([1, 2, 2, 2, 1], 2, [False, True, True, False, False], device, dtype)
        self.check([1, 2, 2, 2, 1], 4, [True, True, True, True, False], device, dtype)
        self.check([5, 5, 5, 5], 1, [True, False, False, False], device, dtype)
        self.check([5, 5, 5, 5], 3, [True, True, True, False], device, dtype)

    def test_signed_zeros_are_equal(self, device, dtype):
        # If -0.0 ranked below 0.0 the answer would be [T, F, F, T].
        self.check([0.0, -0.0, -0.0, 0.0], 2, [True, True, False, False], device, dtype)
        # If -0.0 ranked above 0.0 the answer would be [F, T, F].
        self.check([0.0, -0.0, -1.0], 1, [True, False, False], device, dtype)

    def test_infinities(self, device, dtype):
        values = [1.0, INF, -INF, 5.0, -INF, INF]
        self.check(values, 1, [False, True, False, False, False, False], device, dtype)
        self.check(values, 2, [False, True, False, False, False, True], device, dtype)
        self.check(values, 3, [False, True, False, True, False, True], device, dtype)
        self.check(values, 5, [True, True, True, True, False, True], device, dtype)

    def test_negative_values(self, device, dtype):
        self.check([-3.0, -1.0, -2.0, -1.0], 2, [False, True, False, True], device, dtype)

    def test_tie_rule_is_row_major_for_2d(self, device, dtype):
        # Column 0 holds the ties; row-major order visits (0,0), (1,0), (2,0).
        x = torch.tensor([[7.0, 1.0], [7.0, 2.0], [7.0, 3.0]], dtype=dtype, device=device)
        assert topk_mask(x, 2).cpu().tolist() == [[True, False], [True, False], [False, False]]
        # The transposed view has the same values at different flat indices.
        assert topk_mask(x.t(), 2).cpu().tolist() == [[True, True, False], [False, False, False]]


# ---------------------------------------------------------------------------------------------
# random and adversarial inputs against the reference


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [1, 2, 7, 1023])
def test_flat_matches_reference(n, kind, dtype, device):
    x = make_values(kind, n, dtype, gen(n * 31 + KINDS.index(kind))).to(device)
    for k in k_edges(n):
        assert_matches_reference(x, k)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("kind", KINDS)
def test_flat_100003_matches_reference(kind, dtype, device):
    """Above the CPU kernel's parallel grain (2**15), so the mask pass runs in several chunks.

    The reference sort dominates the run time here, so only the informative k values go through
    it (float64 and float16 are covered at the smaller sizes); k = 0 and k = n are checked
    directly.
    """
    n = 100003
    x = make_values(kind, n, dtype, gen(n * 31 + KINDS.index(kind))).to(device)
    assert not topk_mask(x, 0).any()
    assert topk_mask(x, n).all()
    for k in (1, n // 2, n - 1):
        assert_matches_reference(x, k)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("kind", ["randn", "ties012", "signed_zeros", "inf_mixed"])
@pytest.mark.parametrize("shape", [(), (1, 1), (33, 31), (2, 3, 5, 7), (4, 1, 16, 9), (3, 0)],
                         ids=lambda s: "x".join(map(str, s)) or "scalar")
def test_shapes_match_reference(shape, kind, dtype, device):
    n = math.prod(shape)
    x = make_values(kind, n, dtype, gen(1000 + n)).reshape(shape).to(device)
    for k in k_edges(n):
        assert_matches_reference(x, k)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("kind", ["randn", "ties012", "signed_zeros", "ulp"])
def test_non_contiguous_views(kind, dtype, device):
    g = gen(7)
    base = make_values(kind, 4 * 6 * 10 * 8, dtype, g).reshape(4, 6, 10, 8).to(device)
    views = {
        "transpose": base[0, 0].t(),                       # (8, 10), strides swapped
        "permute": base.permute(3, 1, 0, 2),               # 4-D permutation
        "step_slice": base.reshape(-1)[1::3],              # strided 1-D
        "sub_block": base[1:3, ::2, 3:9, 1::2],            # sliced in every dimension
        "expand": base[0, 0, 0, :1].expand(5, 7),          # stride 0: every element equal
        "t_2d": base.reshape(48, 40).t(),                  # (40, 48) transpose of the whole
    }
    for name, view in views.items():
        assert not view.is_contiguous(), name
        for k in k_edges(view.numel()):
            got = assert_matches_reference(view, k)
            assert torch.equal(got, topk_mask(view.contiguous(), k).cpu()), (name, k)


@pytest.mark.parametrize("device", DEVICES)
def test_randomized_loop(device):
    """Many small random cases: random shape, dtype, value kind, k, and sometimes a transpose."""
    g = gen(2026)
    for _ in range(300):
        dims = int(torch.randint(1, 4, (1,), generator=g))
        shape = tuple(int(s) for s in torch.randint(1, 9, (dims,), generator=g))
        n = math.prod(shape)
        dtype = DTYPES[int(torch.randint(0, len(DTYPES), (1,), generator=g))]
        kind = KINDS[int(torch.randint(0, len(KINDS), (1,), generator=g))]
        x = make_values(kind, n, dtype, g).reshape(shape).to(device)
        if dims >= 2 and bool(torch.rand(1, generator=g) < 0.5):
            x = x.transpose(0, -1)
        k = int(torch.randint(0, n + 1, (1,), generator=g))
        assert_matches_reference(x, k)


@pytest.mark.parametrize("device", DEVICES)
def test_large_input_with_ties(device):
    """Above the CPU kernel's parallel grain many times over, with heavy ties at the threshold."""
    n = 1_000_003
    x = make_values("ties012", n, torch.float32, gen(11)).to(device)
    for k in (1, n // 3, n // 2, n - 1):
        assert_matches_reference(x, k)
        assert ties_split(x, k)


def test_adversarial_inputs_exercise_the_tie_rule():
    """The tie-heavy inputs really put ties across the threshold, so a wrong tie rule would fail.

    A mask that keeps the *higher*-index ties, or that ranks -0.0 below 0.0, must differ from the
    reference on these inputs; this guards against the adversarial cases silently going soft.
    """
    def higher_index_ties(x, k):
        flat = x.reshape(-1).double() + 0.0
        rev = flat.flip(0)
        order = torch.sort(rev, descending=True, stable=True).indices
        mask = torch.zeros(flat.numel(), dtype=torch.bool)
        mask[flat.numel() - 1 - order[:k]] = True
        return mask.reshape(x.shape)

    def signed_zero_unaware(x, k):
        flat = x.reshape(-1).double()
        key = torch.where(flat == 0, torch.copysign(torch.full_like(flat, 1e-300), flat), flat)
        order = torch.sort(key, descending=True, stable=True).indices
        mask = torch.zeros(flat.numel(), dtype=torch.bool)
        mask[order[:k]] = True
        return mask.reshape(x.shape)

    for dtype in DTYPES:
        for kind in ("ties012", "all_equal", "mostly_zeros", "signed_zeros", "ulp"):
            x = make_values(kind, 1023, dtype, gen(1023 * 31 + KINDS.index(kind)))
            k = 1023 // 2
            assert ties_split(x, k), (kind, dtype)
            assert not torch.equal(higher_index_ties(x, k), topk_mask_reference(x, k)), kind
        x = make_values("signed_zeros", 1023, dtype, gen(1023 * 31 + KINDS.index("signed_zeros")))
        assert not torch.equal(signed_zero_unaware(x, 1023 // 2), topk_mask_reference(x, 1023 // 2))


@pytest.mark.parametrize("device", DEVICES)
def test_input_is_not_modified(device):
    x = make_values("ties012", 5000, torch.float32, gen(3)).to(device)
    before = x.clone()
    topk_mask(x, 1234)
    assert torch.equal(x, before)


def test_ulp_inputs_are_distinct_neighbours():
    """The ULP ladder really holds distinct values one ULP apart (sanity of the generator)."""
    for dtype in DTYPES:
        x = ulp_values(10_000, dtype, gen(5))
        distinct = torch.unique(x)
        assert distinct.numel() == 4 * 9, dtype
        one = torch.tensor(1.0, dtype=dtype)
        assert bool((x == one).any()) and bool((x == torch.nextafter(one, torch.tensor(INF, dtype=dtype))).any())


# ---------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_nan_raises(dtype, device):
    for position in (0, 500, 999):
        x = torch.randn(1000, generator=gen(position)).to(dtype)
        x[position] = float("nan")
        x = x.to(device)
        with pytest.raises(RuntimeError, match="NaN"):
            topk_mask(x, 10)
        with pytest.raises(ValueError, match="NaN"):
            topk_mask_reference(x, 10)
    # NaN is reported even when k makes the answer trivial.
    x = torch.tensor([1.0, float("nan"), 2.0], dtype=dtype, device=device)
    for k in (0, 3):
        with pytest.raises(RuntimeError, match="NaN"):
            topk_mask(x, k)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k", [-1, -100, 8, 1000])
def test_k_out_of_range_raises(k, device):
    x = torch.randn(7, generator=gen(1)).to(device)
    with pytest.raises(RuntimeError, match="k"):
        topk_mask(x, k)
    with pytest.raises(ValueError):
        topk_mask_reference(x, k)


@pytest.mark.parametrize("device", DEVICES)
def test_k_positive_on_empty_raises(device):
    with pytest.raises(RuntimeError):
        topk_mask(torch.empty(0, device=device), 1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int8, torch.uint8, torch.bool])
def test_non_floating_dtype_raises(dtype, device):
    x = torch.ones(5, dtype=dtype, device=device)
    with pytest.raises(RuntimeError, match="floating"):
        topk_mask(x, 2)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_with_k_zero(device):
    for shape in [(0,), (3, 0), (0, 4, 2)]:
        x = torch.empty(shape, device=device)
        got = topk_mask(x, 0)
        assert got.shape == shape and got.dtype == torch.bool and got.device == x.device


# ---------------------------------------------------------------------------------------------
# CUDA only


@pytest.mark.skipif(not CUDA, reason=CUDA_SKIP_REASON)
def test_cuda_grid_stride_large():
    """CUDA: more elements than one launch of 65535 blocks x 256 threads covers, so the
    grid-stride loop runs several times; also checks CUDA and CPU give the same masks."""
    n = 65535 * 256 * 2 + 12345
    g = gen(99)
    x = torch.randint(0, 3, (n,), generator=g).float()
    for k in (1, n // 2, n - 1):
        want = topk_mask_reference(x.cuda(), k).cpu()
        got = topk_mask(x.cuda(), k).cpu()
        assert torch.equal(got, want), k
    small = make_values("signed_zeros", 100003, torch.bfloat16, gen(5))
    for k in k_edges(small.numel()):
        assert torch.equal(topk_mask(small.cuda(), k).cpu(), topk_mask(small, k))
