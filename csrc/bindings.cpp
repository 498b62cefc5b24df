// The Python module prunekit._C: loading it registers the operators (torchvision's layout: each
// op's schema in ops/<op>.cpp, its kernels in ops/cpu/<op>_kernel.cpp and ops/cuda/<op>_kernel.cu,
// code both share in ops/common/). Python calls them through torch.ops.prunekit.<name>, which
// dispatches on the tensors' device.
#include <torch/extension.h>

#include "simd/simd.h"

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
