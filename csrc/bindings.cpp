// Operator schemas of prunekit._C and the Python module that loads them.
//
// Each kernel family registers its CPU and CUDA implementations with TORCH_LIBRARY_IMPL in its
// own folder; Python calls them through torch.ops.prunekit.<name>, which dispatches on device.
#include <torch/extension.h>
#include <torch/library.h>

TORCH_LIBRARY(prunekit, m) {
  // Bool mask of scores' shape keeping exactly k elements: the k largest, ties at the threshold
  // broken by lower flat index. NaN scores are an error.
  m.def("topk_mask(Tensor scores, int k) -> Tensor");
  // One bool mask per tensor, keeping exactly k elements over all of them together: the k largest,
  // ties broken by lower (tensor, flat index). One dtype; NaN is an error naming the tensor.
  m.def("topk_masks(Tensor[] scores, int k) -> Tensor[]");
}

namespace {

bool cuda_compiled() {
#ifdef PRUNEKIT_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "prunekit kernels; call them through prunekit.ops";
  m.def("cuda_compiled", &cuda_compiled, "Whether this build includes the CUDA kernels.");
}
