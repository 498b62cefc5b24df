#include "topk_masks_common.h"

#include <c10/util/Exception.h>

namespace prunekit {
namespace topk {

namespace {
constexpr const char* kNames[] = {"score", "magnitude", "snip", "gradflow"};
}

Criterion parse_criterion(const std::string& name) {
  for (int c = 0; c < 4; ++c) {
    if (name == kNames[c]) return static_cast<Criterion>(c);
  }
  TORCH_CHECK(false, "topk_masks: criterion must be one of score, magnitude, snip, gradflow; got '",
              name, "'");
  return Criterion::Score;  // not reached
}

const char* criterion_name(Criterion c) { return kNames[static_cast<int>(c)]; }

Request check_request(at::TensorList inputs, at::TensorList grads, const std::string& criterion,
                      at::IntArrayRef counts, at::IntArrayRef groups, at::DeviceType device) {
  Request request;
  request.criterion = parse_criterion(criterion);
  const int64_t n = static_cast<int64_t>(inputs.size());
  TORCH_CHECK(n < (int64_t(1) << 32) - 1, "topk_masks: at most 2^32 - 2 inputs");  // 32-bit ids
  if (needs_grads(request.criterion)) {
    TORCH_CHECK(static_cast<int64_t>(grads.size()) == n, "topk_masks: criterion ", criterion,
                " needs one gradient per input, got ", grads.size(), " for ", n, " inputs");
  } else {
    TORCH_CHECK(grads.empty(), "topk_masks: criterion ", criterion, " takes no gradients, got ",
                grads.size());
  }
  TORCH_CHECK(static_cast<int64_t>(groups.size()) == n,
              "topk_masks: expected one group per input, got ", groups.size(), " groups for ", n,
              " inputs");
  request.counts.assign(counts.begin(), counts.end());
  request.members.resize(counts.size());
  request.totals.assign(counts.size(), 0);
  for (int64_t t = 0; t < n; ++t) {
    const at::Tensor& x = inputs[t];
    TORCH_CHECK(x.is_floating_point(), "topk_masks: expected floating-point inputs, got ",
                x.scalar_type(), " in inputs[", t, "]");
    TORCH_CHECK(x.device().type() == device && x.device() == inputs[0].device(),
                "topk_masks: expected every input on ", inputs[0].device(), ", got inputs[", t,
                "] on ", x.device());
    TORCH_CHECK(x.scalar_type() == inputs[0].scalar_type(), "topk_masks: expected one dtype, got ",
                inputs[0].scalar_type(), " and ", x.scalar_type(), " in inputs[", t, "]");
    TORCH_CHECK(groups[t] >= 0 && groups[t] < static_cast<int64_t>(counts.size()),
                "topk_masks: groups[", t, "] = ", groups[t], " is not below the number of counts (",
                counts.size(), ")");
    request.inputs.push_back(x.contiguous());
    if (!grads.empty()) {
      const at::Tensor& g = grads[t];
      TORCH_CHECK(g.sizes() == x.sizes() && g.scalar_type() == x.scalar_type() &&
                      g.device() == x.device(),
                  "topk_masks: expected grads[", t, "] like inputs[", t, "] (", x.sizes(), " ",
                  x.scalar_type(), " on ", x.device(), "), got ", g.sizes(), " ", g.scalar_type(),
                  " on ", g.device());
      request.grads.push_back(g.contiguous());
    }
    request.members[groups[t]].push_back(t);
    request.totals[groups[t]] += x.numel();
  }
  for (size_t g = 0; g < counts.size(); ++g) {
    TORCH_CHECK(counts[g] >= 0 && counts[g] <= request.totals[g], "topk_masks: expected 0 <= k <= ",
                request.totals[g], " (the elements of group ", g, "), got k = ", counts[g]);
  }
  return request;
}

void fail_on_nan(Criterion c, int64_t tensor, int64_t index) {
  TORCH_CHECK(false, "topk_masks: NaN score (criterion ", criterion_name(c), ") in inputs[", tensor,
              "] at flat index ", index);
}

}  // namespace topk
}  // namespace prunekit
