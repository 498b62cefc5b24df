"""The radix top-k over many tensors against the concatenate-and-sort reference."""
import pytest
import torch

from prunekit.ops import topk_masks, topk_masks_reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def random_tensors(kind, generator, count=None, dtype=torch.float32):
    count = count or int(torch.randint(1, 7, (), generator=generator))
    tensors = []
    for _ in range(count):
        n = int(torch.randint(0, 400, (), generator=generator))
        if kind == "normal":
            t = torch.randn(n, generator=generator)
        elif kind == "heavy ties":
            t = torch.randint(0, 3, (n,), generator=generator).float()
        elif kind == "mostly zero":
            t = torch.where(torch.rand(n, generator=generator) < 0.9, 0.0,
                            torch.rand(n, generator=generator))
        elif kind == "all equal":
            t = torch.full((n,), 0.25)
        elif kind == "lowest mantissa bits":
            t = torch.full((n,), 1.0) + torch.randint(0, 4, (n,), generator=generator) * 2 ** -23
        else:  # "inf and signed zeros"
            t = torch.where(torch.rand(n, generator=generator) < 0.2, float("inf"),
                            torch.randn(n, generator=generator))
            t[: n // 3] = -0.0
            t[n // 3: n // 2] = 0.0
            t[-1:] = -float("inf")
        tensors.append(t.to(dtype).reshape(2, -1) if n % 2 == 0 and n else t.to(dtype))
    return tensors


def assert_matches_reference(tensors, k):
    got = topk_masks(tensors, k)
    expected = topk_masks_reference(tensors, k)
    assert len(got) == len(expected)
    for g, e, t in zip(got, expected, tensors):
        assert g.dtype == torch.bool and g.shape == t.shape
        assert torch.equal(g, e)
    assert sum(int(g.sum()) for g in got) == k


KINDS = ["normal", "heavy ties", "mostly zero", "all equal", "lowest mantissa bits",
         "inf and signed zeros"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_kept_sets_equal_the_reference(kind, dtype):
    generator = torch.Generator().manual_seed(10 * KINDS.index(kind) + DTYPES.index(dtype))
    for _ in range(25):
        tensors = random_tensors(kind, generator, dtype=dtype)
        total = sum(t.numel() for t in tensors)
        for k in {0, total, int(torch.randint(0, total + 1, (), generator=generator))}:
            assert_matches_reference(tensors, k)


def test_ties_across_tensors_go_to_the_earlier_tensor_then_the_lower_index():
    a, b = torch.tensor([1.0, 2.0, 1.0]), torch.tensor([1.0, 3.0])
    masks = topk_masks([a, b], 3)  # 3.0, 2.0, then the first 1.0: a[0]
    assert masks[0].tolist() == [True, True, False] and masks[1].tolist() == [False, True]


def test_a_million_scores_in_fifty_tensors_with_ties():
    generator = torch.Generator().manual_seed(0)
    tensors = [torch.randint(0, 1000, (20_000,), generator=generator).float() / 7
               for _ in range(50)]
    for ratio in (0.1, 0.5, 0.9):
        assert_matches_reference(tensors, int(ratio * 1_000_000))


def test_mixed_dtypes_are_read_at_the_widest():
    half = torch.tensor([0.5, 0.25], dtype=torch.float16)
    single = torch.tensor([0.3, 0.1], dtype=torch.float32)
    masks = topk_masks([half, single], 2)
    assert masks[0].tolist() == [True, False] and masks[1].tolist() == [True, False]


def test_empty_inputs_and_tensors():
    assert topk_masks([], 0) == []
    empty = torch.empty(0)
    masks = topk_masks([empty, torch.tensor([2.0, 1.0]), empty], 1)
    assert [m.shape for m in masks] == [(0,), (2,), (0,)]
    assert masks[1].tolist() == [True, False]
    assert topk_masks([empty], 0)[0].shape == (0,)


def test_nan_names_the_tensor_and_index():
    with pytest.raises(RuntimeError, match=r"NaN in scores\[1\] at flat index 2"):
        topk_masks([torch.ones(4), torch.tensor([0.0, 1.0, float("nan")])], 1)


@pytest.mark.parametrize("k", [-1, 6])
def test_k_out_of_range_raises(k):
    with pytest.raises(RuntimeError, match="expected 0 <= k <= 5"):
        topk_masks([torch.ones(2), torch.ones(3)], k)


def test_inputs_are_not_modified_and_views_work():
    base = torch.randn(6, 8)
    view = base.t()  # not contiguous
    before = view.clone()
    assert_matches_reference([view, torch.randn(5)], 17)
    assert torch.equal(view, before)


def test_non_floating_scores_raise():
    with pytest.raises(RuntimeError, match="floating-point"):
        topk_masks([torch.ones(3, dtype=torch.int64)], 1)
