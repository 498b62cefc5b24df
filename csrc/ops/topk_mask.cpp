// Schema of prunekit::topk_mask; kernels: cpu/topk_mask_kernel.cpp, cuda/topk_masks_kernel.cu.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(prunekit, m) {
  // Bool mask of scores' shape keeping exactly k elements: the k largest, ties at the threshold
  // broken by lower flat index. NaN scores are an error.
  m.def("topk_mask(Tensor scores, int k) -> Tensor");
}
