// Schemas of prunekit::sparse_conv2d, its plan, its schedule and its backward; kernels:
// cpu/sparse_conv2d_kernel.cpp, cpu/sparse_conv2d_plan.cpp, cpu/sparse_conv2d_backward_kernel.cpp,
// cuda/sparse_conv2d_kernel.cu.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(prunekit, m) {
  // conv2d (groups 1) with a sparse weight stored as CSR rows, one per output channel: row oc's
  // kept weights are values[row_offsets[oc]:row_offsets[oc+1]], at flattened (in-channel, kh, kw)
  // positions columns[...]. Only kept weights are multiplied. float32/float64.
  // On CPU, `plan` (from sparse_conv2d_plan, for this layer and input size) saves planning the
  // taps on every call; other devices take none.
  m.def("sparse_conv2d(Tensor input, Tensor values, Tensor row_offsets, Tensor columns, "
        "Tensor? bias, int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, "
        "Tensor? plan=None) -> Tensor");
  // Where each kept weight of the layer reads an input of `input`'s height and width, as one
  // int64 tensor for sparse_conv2d's `plan` (CPU). It holds no values: it stays valid while
  // row_offsets and columns do.
  m.def("sparse_conv2d_plan(Tensor input, Tensor values, Tensor row_offsets, Tensor columns, "
        "int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation) -> Tensor");
  // How the CPU kernel cuts a call on an input of `input`'s shape into work, in words ("tiles
  // 2x32, 4 bands x 8 groups"): chosen from the shapes, for `prunekit bench model`.
  m.def("sparse_conv2d_schedule(Tensor input, Tensor values, Tensor row_offsets, Tensor columns, "
        "int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation) -> str");
  // sparse_conv2d's gradients with respect to the input and to the kept weights (values), for
  // the given grad_output; the bias's gradient is grad_output summed over (N, H, W).
  m.def("sparse_conv2d_backward(Tensor grad_output, Tensor input, Tensor values, "
        "Tensor row_offsets, Tensor columns, int[2] kernel_size, int[2] stride, int[2] padding, "
        "int[2] dilation) -> (Tensor, Tensor)");
}
