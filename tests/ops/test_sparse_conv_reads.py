"""The CPU sparse_conv2d reads nothing past its input.

Layers whose taps need no zero border read the caller's input in place, so a block that read past
the last position would touch memory after the tensor. Each input here ends exactly where an
inaccessible page begins: a read past its end kills the process (run apart, so the failure is a
test failure with its output, not a crashed test session).
"""
import subprocess
import sys
import textwrap

import pytest

PROGRAM = textwrap.dedent("""
    import ctypes, math, mmap, sys
    import torch
    import torch.nn.functional as F
    from prunekit.ops import SparseConv2d, sparse_conv2d

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]

    def ending_at_a_guard_page(shape, dtype):
        numel = math.prod(shape)
        nbytes = numel * dtype.itemsize
        page = mmap.PAGESIZE
        pages = -(-nbytes // page)
        region = mmap.mmap(-1, (pages + 1) * page)
        start = ctypes.addressof(ctypes.c_char.from_buffer(region))
        if libc.mprotect(start + pages * page, page, 0) != 0:  # PROT_NONE
            raise OSError(ctypes.get_errno(), "mprotect failed")
        x = torch.frombuffer(region, dtype=dtype, count=numel, offset=pages * page - nbytes)
        return x.view(shape), region

    dtype = getattr(torch, sys.argv[1])
    for name, (in_channels, out_channels, kernel, stride, padding, dilation, size) in eval(
            sys.argv[2]).items():
        print(name, flush=True)  # the last name printed is the layer that failed
        generator = torch.Generator().manual_seed(0)
        conv = torch.nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding,
                               dilation=dilation, dtype=dtype)
        mask = torch.rand(conv.weight.shape, generator=generator) < 0.5
        mask[:, -1] = True  # the last channel is read, up to the input's last element
        x, region = ending_at_a_guard_page((2, in_channels) + size, dtype)
        x.copy_(torch.randn(x.shape, generator=generator, dtype=dtype))
        layer = SparseConv2d.from_conv(conv, mask)
        with torch.no_grad():
            expected = F.conv2d(x, conv.weight * mask, conv.bias, conv.stride, conv.padding,
                                conv.dilation)
            unplanned = sparse_conv2d(x, layer.values, layer.row_offsets, layer.columns,
                                      conv.kernel_size, layer.bias, conv.stride, conv.padding,
                                      conv.dilation)
            for got in (layer(x), unplanned):
                torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    print("read within the input")
""")

LAYERS = {
    # in, out, kernel, stride, padding, dilation, input size (h, w)
    "1x1, positions not a multiple of a block": (8, 5, 1, 1, 0, 1, (7, 9)),
    "1x1 on a larger plane": (3, 4, 1, 1, 0, 1, (23, 37)),
    "1x1 in several bands of rows": (3, 4, 1, 1, 0, 1, (41, 45)),
    "1x1 stride 2": (6, 3, 1, 2, 0, 1, (9, 11)),
    "1x1 stride 2 down, 1 across": (6, 3, 1, (2, 1), 0, 1, (9, 45)),
    "3x1 kernel, no padding": (4, 3, (3, 1), 1, 0, 1, (10, 13)),
    "dilation 12 on 8x10: only the centre tap lands": (5, 4, 3, 1, 12, 12, (8, 10)),
    "3x3 padded (bordered copy)": (4, 4, 3, 1, 1, 1, (6, 7)),
    "1x1 on fewer positions than one vector": (3, 4, 1, 1, 0, 1, (1, 5)),
    "1x1 on one vector and a bit": (2, 3, 1, 1, 0, 1, (3, 3)),
    "1x1 in bands, the last short (its last run starts in the band before)": (
        3, 4, 1, 1, 0, 1, (37, 29)),
    "3x1 kernel, no padding, rows in tiles": (4, 3, (3, 1), 1, 0, 1, (12, 5)),
    "1x1 in bands shorter than a run (the last run starts in the band before)": (
        4096, 2, 1, 1, 0, 1, (17, 2)),
    "1x1 with 64 or more kept weights a channel (runs of 8 vectors), in bands": (
        160, 3, 1, 1, 0, 1, (37, 29)),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_reads_stay_inside_an_input_that_ends_at_a_guard_page(dtype):
    done = subprocess.run([sys.executable, "-c", PROGRAM, dtype, repr(LAYERS)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (
        f"exit code {done.returncode} (-11: read past the input) in the last layer named:\n"
        f"{done.stdout}{done.stderr}")
    assert done.stdout.endswith("read within the input\n")
