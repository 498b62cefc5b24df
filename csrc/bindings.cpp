// Operator schemas of prunekit._C and the Python module that loads them.
//
// Each kernel family registers its CPU and CUDA implementations with TORCH_LIBRARY_IMPL in its
// own folder; Python calls them through torch.ops.prunekit.<name>, which dispatches on device.
#include <torch/extension.h>
#include <torch/library.h>

#include "simd/simd.h"

TORCH_LIBRARY(prunekit, m) {
  // Bool mask of scores' shape keeping exactly k elements: the k largest, ties at the threshold
  // broken by lower flat index. NaN scores are an error.
  m.def("topk_mask(Tensor scores, int k) -> Tensor");
  // One bool mask per input. Each input's score is criterion(input, grad) ("score": the input
  // itself; "magnitude": |w|; "snip": |w*g|; "gradflow": |g|*w^2). Inputs form groups (groups[t]
  // is input t's group); group g keeps exactly counts[g] elements: its largest scores, ties to the
  // lower (input, flat index). Also returns each group's threshold (its smallest kept score, inf
  // when it keeps none) as float64. One dtype and device; a NaN score is an error naming the input.
  m.def("topk_masks(Tensor[] inputs, Tensor[] grads, str criterion, int[] counts, int[] groups)"
        " -> (Tensor[], Tensor)");
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
  // sparse_conv2d's gradients with respect to the input and to the kept weights (values), for
  // the given grad_output; the bias's gradient is grad_output summed over (N, H, W).
  m.def("sparse_conv2d_backward(Tensor grad_output, Tensor input, Tensor values, "
        "Tensor row_offsets, Tensor columns, int[2] kernel_size, int[2] stride, int[2] padding, "
        "int[2] dilation) -> (Tensor, Tensor)");
}

namespace {

bool cuda_compiled() {
#ifdef PRUNEKIT_WITH_CUDA
  return true;
#else
  return false;
#endif
}

// at::parallel_for in this extension runs on torch's threads only when compiled with OpenMP.
bool openmp_compiled() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "prunekit kernels; call them through prunekit.ops";
  m.def("cuda_compiled", &cuda_compiled, "Whether this build includes the CUDA kernels.");
  m.def("openmp_compiled", &openmp_compiled,
        "Whether this build's parallel loops use OpenMP (else they run on one thread).");
  m.def("simd_level", [] { return prunekit::simd::use_avx2() ? "avx2" : "default"; },
        "Which build of the CPU hot loops runs: 'avx2' or 'default'.");
  m.def("force_default_simd", &prunekit::simd::force_default, py::arg("forced"),
        "Run the default build of the CPU hot loops even on AVX2 CPUs (for tests), or not.");
  m.def("default_simd_forced", &prunekit::simd::default_forced,
        "Whether force_default_simd(True) is in effect.");
}
