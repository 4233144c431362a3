// Thin torch binding over the C API: checks, dtype conversion, output allocation. All math lives in csrc/cpu and
// csrc/cuda. Ops (schemas below) are registered with TORCH_LIBRARY for CPU (and CUDA where built); their fake
// registrations are in hyperloss/native.py, so torch.compile can trace them.
#include <Python.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <tuple>

#ifdef HYPERLOSS_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include "../cuda/uniform.h"
#endif

#include "hyperloss/hyperloss.h"

namespace {

// Computation happens in float64 for float64 inputs and in float32 for every other float dtype.
at::Tensor to_compute_dtype(const at::Tensor& t) {
  TORCH_CHECK(t.dim() == 2, "hyperloss: expected a 2-D tensor, got ", t.dim(), "-D");
  TORCH_CHECK(t.device().is_cpu(), "hyperloss: the native CPU kernels take CPU tensors, got ", t.device());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "hyperloss: expected a floating-point tensor, got ",
              t.scalar_type());
  return t.scalar_type() == at::kDouble ? t : t.to(at::kFloat);
}

hl_dtype dtype_of(const at::Tensor& t) { return t.scalar_type() == at::kDouble ? HL_FLOAT64 : HL_FLOAT32; }

hl_matrix view_of(const at::Tensor& t) { return {t.data_ptr(), t.size(0), t.size(1), t.stride(0), t.stride(1)}; }

void check(hl_status status) { TORCH_CHECK(status == HL_OK, "hyperloss: ", hl_status_string(status)); }

// t and alpha arrive as 0-dim tensors, so that torch.compile traces one graph for every value of them.
double scalar_of(const at::Tensor& t) {
  TORCH_CHECK(t.numel() == 1, "hyperloss: t and alpha must be one-element tensors");
  return t.item<double>();
}

// lse is returned in float64 whatever the input dtype: the loss lse - log|P| is often tiny next to log|P|.
std::tuple<at::Tensor, at::Tensor, at::Tensor> uniform_lse(const at::Tensor& x, const std::optional<at::Tensor>& queue,
                                                           const at::Tensor& t, bool intra_batch, bool grad_x,
                                                           bool grad_queue,
                                                           int64_t /*precision: float32 products are exact here*/) {
  const at::Tensor xc = to_compute_dtype(x);
  at::Tensor qc;
  hl_matrix qv{nullptr, 0, xc.size(1), 0, 0};
  if (queue.has_value()) {
    qc = to_compute_dtype(*queue);
    TORCH_CHECK(qc.scalar_type() == xc.scalar_type() && qc.size(1) == xc.size(1),
                "hyperloss: queue must match x in dtype and feature size");
    qv = view_of(qc);
  }
  const auto options = xc.options();
  at::Tensor gx = grad_x ? at::empty({xc.size(0), xc.size(1)}, options) : at::empty({0}, options);
  at::Tensor gq = grad_queue && queue.has_value() ? at::empty({qc.size(0), qc.size(1)}, options)
                                                  : at::empty({0}, options);
  double lse = 0;
  check(hl_uniform_lse_cpu(dtype_of(xc), view_of(xc), qv, scalar_of(t), intra_batch, at::get_num_threads(), &lse,
                           gx.numel() ? gx.data_ptr() : nullptr, gq.numel() ? gq.data_ptr() : nullptr));
  return {at::scalar_tensor(lse, options.dtype(at::kDouble)), gx, gq};
}

std::tuple<at::Tensor, at::Tensor> align(const at::Tensor& x, const at::Tensor& y, const at::Tensor& alpha,
                                         bool grad_x) {
  const at::Tensor xc = to_compute_dtype(x), yc = to_compute_dtype(y);
  TORCH_CHECK(xc.sizes() == yc.sizes() && xc.scalar_type() == yc.scalar_type(),
              "hyperloss: x and y must have the same shape and dtype");
  const auto options = xc.options();
  at::Tensor gx = grad_x ? at::empty({xc.size(0), xc.size(1)}, options) : at::empty({0}, options);
  double loss = 0;
  check(hl_align_cpu(dtype_of(xc), view_of(xc), view_of(yc), scalar_of(alpha), at::get_num_threads(), &loss,
                     grad_x ? gx.data_ptr() : nullptr));
  return {at::scalar_tensor(loss, options), gx};
}

#ifdef HYPERLOSS_WITH_CUDA
// CUDA: inputs stay in their dtype (the kernels convert float16/bfloat16 on load); outputs in the compute dtype.
hl_dtype cuda_dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kDouble: return HL_FLOAT64;
    case at::kFloat: return HL_FLOAT32;
    case at::kHalf: return HL_FLOAT16;
    case at::kBFloat16: return HL_BFLOAT16;
    default: TORCH_CHECK(false, "hyperloss: unsupported dtype ", t.scalar_type());
  }
}

void check_cuda_input(const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK(t.dim() == 2 && t.is_cuda() && t.device() == x.device() && t.scalar_type() == x.scalar_type(),
              "hyperloss: CUDA inputs must be 2-D tensors of one dtype on one device");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> uniform_lse_cuda(const at::Tensor& x,
                                                                const std::optional<at::Tensor>& queue,
                                                                const at::Tensor& t, bool intra_batch, bool grad_x,
                                                                bool grad_queue, int64_t precision) {
  check_cuda_input(x, x);
  if (queue.has_value()) check_cuda_input(*queue, x);
  const c10::cuda::CUDAGuard guard(x.device());
  const auto options = x.options().dtype(x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
  const bool cross = queue.has_value();
  const int64_t k = cross ? queue->size(0) : 0;
  at::Tensor lse = at::empty({}, options.dtype(at::kDouble));  // in double even for float32 inputs
  at::Tensor gx = grad_x ? at::empty({x.size(0), x.size(1)}, options) : at::empty({0}, options);
  at::Tensor gq = grad_queue && cross ? at::empty({k, x.size(1)}, options) : at::empty({0}, options);
  const size_t bytes =
      hl_uniform_workspace_bytes_cuda(cuda_dtype_of(x), x.size(0), k, x.size(1), gx.numel() > 0, gq.numel() > 0);
  at::Tensor workspace = at::empty({static_cast<int64_t>(bytes)}, x.options().dtype(at::kByte));
  const hl_matrix qv = cross ? view_of(*queue) : hl_matrix{nullptr, 0, x.size(1), 0, 0};
  hyperloss::cuda::UniformResults results;
  results.lse_f64 = lse.data_ptr<double>();
  check(hyperloss::cuda::uniform_lse(cuda_dtype_of(x), static_cast<hl_precision>(precision), view_of(x), qv,
                                     scalar_of(t), intra_batch, results, gx.numel() ? gx.data_ptr() : nullptr,
                                     gq.numel() ? gq.data_ptr() : nullptr, workspace.data_ptr(), bytes,
                                     c10::cuda::getCurrentCUDAStream().stream()));
  return {lse, gx, gq};
}

std::tuple<at::Tensor, at::Tensor> align_cuda(const at::Tensor& x, const at::Tensor& y, const at::Tensor& alpha,
                                              bool grad_x) {
  check_cuda_input(x, x);
  check_cuda_input(y, x);
  TORCH_CHECK(x.sizes() == y.sizes(), "hyperloss: x and y must have the same shape");
  const c10::cuda::CUDAGuard guard(x.device());
  const auto options = x.options().dtype(x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
  at::Tensor loss = at::empty({}, options);
  at::Tensor gx = grad_x ? at::empty({x.size(0), x.size(1)}, options) : at::empty({0}, options);
  const size_t bytes = hl_align_workspace_bytes_cuda(cuda_dtype_of(x), x.size(0));
  at::Tensor workspace = at::empty({static_cast<int64_t>(bytes)}, x.options().dtype(at::kByte));
  check(hl_align_cuda(cuda_dtype_of(x), view_of(x), view_of(y), scalar_of(alpha), loss.data_ptr(),
                      grad_x ? gx.data_ptr() : nullptr, workspace.data_ptr(), bytes,
                      c10::cuda::getCurrentCUDAStream().stream()));
  return {loss, gx};
}
#endif

}  // namespace

TORCH_LIBRARY(hyperloss, m) {
  m.def("uniform_lse(Tensor x, Tensor? queue, Tensor t, bool intra_batch, bool grad_x, bool grad_queue, "
        "int precision=0) -> (Tensor, Tensor, Tensor)");
  m.def("align(Tensor x, Tensor y, Tensor alpha, bool grad_x) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(hyperloss, CPU, m) {
  m.impl("uniform_lse", &uniform_lse);
  m.impl("align", &align);
}

#ifdef HYPERLOSS_WITH_CUDA
TORCH_LIBRARY_IMPL(hyperloss, CUDA, m) {
  m.impl("uniform_lse", &uniform_lse_cuda);
  m.impl("align", &align_cuda);
}
#endif

// `import hyperloss._C` loads this library (running the registrations above); the module itself is empty.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "hyperloss native ops (torch.ops.hyperloss)", -1,
                                   nullptr};
  return PyModule_Create(&module_def);
}
