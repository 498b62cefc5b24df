// Schema of prunekit::topk_masks; kernels: cpu/topk_masks_kernel.cpp, cuda/topk_masks_kernel.cu.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(prunekit, m) {
  // One bool mask per input. Each input's score is criterion(input, grad) ("score": the input
  // itself; "magnitude": |w|; "snip": |w*g|; "gradflow": |g|*w^2). Inputs form groups (groups[t]
  // is input t's group); group g keeps exactly counts[g] elements: its largest scores, ties to the
  // lower (input, flat index). Also returns each group's threshold (its smallest kept score, inf
  // when it keeps none) as float64. One dtype and device; a NaN score is an error naming the input.
  m.def("topk_masks(Tensor[] inputs, Tensor[] grads, str criterion, int[] counts, int[] groups)"
        " -> (Tensor[], Tensor)");
}
