// XLA FFI handlers over the hyperloss C API, for hyperloss/jax.py (jax.ffi.ffi_call); CPU always, CUDA where the
// library is built with CUDA (HYPERLOSS_WITH_CUDA).
//   hyperloss_uniform_loss(x, queue; t, intra_batch, with_grad, precision) -> (loss, grad_x, grad_queue)
//   hyperloss_align(x, y; alpha, with_grad) -> (loss, grad_x)
// The uniformity loss is lse - log|P|, formed in double from the kernels' double lse and clamped to <= 0 (every
// score is <= 0), then rounded once to the result dtype: near 0 the loss is far smaller than log|P|, and a float32
// subtraction would keep none of its digits. Its gradient is that of lse. Arrays arrive contiguous and in float32
// or float64 (the Python side converts half types). A queue with zero rows means no queue; without with_grad the
// gradient results have zero elements. `precision` (hl_precision) sets the float32 products on the GPU; the CPU
// products are always exact.
#include <cmath>
#include <string>
#include <utility>

#ifdef HYPERLOSS_WITH_CUDA
#include <cuda_runtime.h>

#include "../cuda/uniform.h"
#endif

#include "../args.h"
#include "hyperloss/hyperloss.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

ffi::Error check(hl_status status) {
  if (status == HL_OK) return ffi::Error::Success();
  return ffi::Error(ffi::ErrorCode::kInvalidArgument, std::string("hyperloss: ") + hl_status_string(status));
}

bool float_type(ffi::DataType t) { return t == ffi::DataType::F32 || t == ffi::DataType::F64; }

hl_matrix matrix_of(const ffi::AnyBuffer& b) {
  const auto dims = b.dimensions();
  const int64_t rows = dims.size() == 2 ? dims[0] : 0, cols = dims.size() == 2 ? dims[1] : 0;
  return {rows ? b.untyped_data() : nullptr, rows, cols, cols, 1};
}

// The hl_dtype of two 2-D arrays of one float32/float64 dtype, or an error naming them.
ffi::Error pair_dtype(const ffi::AnyBuffer& x, const ffi::AnyBuffer& other, const char* names, hl_dtype& dtype) {
  if (!float_type(x.element_type()) || x.element_type() != other.element_type() || x.dimensions().size() != 2)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      std::string("hyperloss: ") + names + " must be 2-D float32/float64 arrays of one dtype");
  dtype = x.element_type() == ffi::DataType::F64 ? HL_FLOAT64 : HL_FLOAT32;
  return ffi::Error::Success();
}

void store_scalar(ffi::Result<ffi::AnyBuffer>& out, double value) {
  if (out->element_type() == ffi::DataType::F64)
    *static_cast<double*>(out->untyped_data()) = value;
  else
    *static_cast<float*>(out->untyped_data()) = static_cast<float>(value);
}

// The loss log mean_P exp(s) = lse - log|P| in double, never above 0 (NaN stays NaN).
double uniform_loss_of(double lse, const hl_matrix& x, const hl_matrix& queue, bool intra_batch) {
  const double loss = lse - std::log(hyperloss::num_pairs(x.rows, queue.data ? queue.rows : 0, intra_batch));
  return loss > 0 ? 0.0 : loss;
}

ffi::Error uniform_loss(ffi::AnyBuffer x, ffi::AnyBuffer queue, double t, bool intra_batch, bool with_grad,
                        int64_t /*precision*/, ffi::Result<ffi::AnyBuffer> loss, ffi::Result<ffi::AnyBuffer> grad_x,
                        ffi::Result<ffi::AnyBuffer> grad_queue) {
  hl_dtype dtype;
  if (ffi::Error error = pair_dtype(x, queue, "x and queue", dtype); error.failure()) return error;
  const hl_matrix a = matrix_of(x), q = matrix_of(queue);
  double lse = 0;
  ffi::Error error = check(hl_uniform_lse_cpu(dtype, a, q, t, intra_batch, 0, &lse,
                                              with_grad ? grad_x->untyped_data() : nullptr,
                                              with_grad && q.data ? grad_queue->untyped_data() : nullptr));
  if (error.failure()) return error;
  store_scalar(loss, uniform_loss_of(lse, a, q, intra_batch));
  return ffi::Error::Success();
}

ffi::Error align(ffi::AnyBuffer x, ffi::AnyBuffer y, double alpha, bool with_grad, ffi::Result<ffi::AnyBuffer> loss,
                 ffi::Result<ffi::AnyBuffer> grad_x) {
  hl_dtype dtype;
  if (ffi::Error error = pair_dtype(x, y, "x and y", dtype); error.failure()) return error;
  double value = 0;
  ffi::Error error = check(hl_align_cpu(dtype, matrix_of(x), matrix_of(y), alpha, 0, &value,
                                        with_grad ? grad_x->untyped_data() : nullptr, nullptr));
  if (error.failure()) return error;
  store_scalar(loss, value);
  return ffi::Error::Success();
}

#ifdef HYPERLOSS_WITH_CUDA
// The same calls on the GPU: asynchronous on XLA's stream, the workspace from XLA's scratch allocator.
void* scratch_for(ffi::ScratchAllocator& scratch, size_t bytes) {
  const std::optional<void*> memory = scratch.Allocate(bytes, 256);
  return memory.has_value() ? *memory : nullptr;
}

// The loss is formed on the device, in double, by the kernel that reduces lse (hyperloss::cuda::uniform_lse).
ffi::Error uniform_loss_cuda(cudaStream_t stream, ffi::ScratchAllocator scratch, ffi::AnyBuffer x,
                             ffi::AnyBuffer queue, double t, bool intra_batch, bool with_grad, int64_t precision,
                             ffi::Result<ffi::AnyBuffer> loss, ffi::Result<ffi::AnyBuffer> grad_x,
                             ffi::Result<ffi::AnyBuffer> grad_queue) {
  hl_dtype dtype;
  if (ffi::Error error = pair_dtype(x, queue, "x and queue", dtype); error.failure()) return error;
  const hl_matrix a = matrix_of(x), q = matrix_of(queue);
  const bool grad_q = with_grad && q.data != nullptr;
  const size_t bytes = hl_uniform_workspace_bytes_cuda(dtype, a.rows, q.rows, a.cols, with_grad, grad_q);
  if (bytes == 0) return check(HL_ERR_INVALID_ARGUMENT);
  void* workspace = scratch_for(scratch, bytes);
  if (workspace == nullptr) return ffi::Error(ffi::ErrorCode::kResourceExhausted, "hyperloss: no scratch memory");
  hyperloss::cuda::UniformResults results;
  results.loss = loss->untyped_data();
  return check(hyperloss::cuda::uniform_lse(dtype, static_cast<hl_precision>(precision), a, q, t, intra_batch,
                                            results, with_grad ? grad_x->untyped_data() : nullptr,
                                            grad_q ? grad_queue->untyped_data() : nullptr, workspace, bytes, stream));
}

ffi::Error align_cuda(cudaStream_t stream, ffi::ScratchAllocator scratch, ffi::AnyBuffer x, ffi::AnyBuffer y,
                      double alpha, bool with_grad, ffi::Result<ffi::AnyBuffer> loss,
                      ffi::Result<ffi::AnyBuffer> grad_x) {
  hl_dtype dtype;
  if (ffi::Error error = pair_dtype(x, y, "x and y", dtype); error.failure()) return error;
  const hl_matrix xm = matrix_of(x);
  const size_t bytes = hl_align_workspace_bytes_cuda(dtype, xm.rows);
  if (bytes == 0) return check(HL_ERR_INVALID_ARGUMENT);
  void* workspace = scratch_for(scratch, bytes);
  if (workspace == nullptr) return ffi::Error(ffi::ErrorCode::kResourceExhausted, "hyperloss: no scratch memory");
  return check(hl_align_cuda(dtype, xm, matrix_of(y), alpha, loss->untyped_data(),
                             with_grad ? grad_x->untyped_data() : nullptr, nullptr, workspace, bytes, stream));
}
#endif

}  // namespace

// Arguments, attributes and results, shared by the CPU handlers and the CUDA ones (which first take XLA's stream
// and scratch allocator).
template <typename Binding>
auto uniform_signature(Binding binding) {
  return std::move(binding)
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Attr<double>("t")
      .template Attr<bool>("intra_batch")
      .template Attr<bool>("with_grad")
      .template Attr<int64_t>("precision")
      .template Ret<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>();
}

template <typename Binding>
auto align_signature(Binding binding) {
  return std::move(binding)
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Attr<double>("alpha")
      .template Attr<bool>("with_grad")
      .template Ret<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(HyperlossUniformLoss, uniform_loss, uniform_signature(ffi::Ffi::Bind()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(HyperlossAlign, align, align_signature(ffi::Ffi::Bind()));

#ifdef HYPERLOSS_WITH_CUDA
XLA_FFI_DEFINE_HANDLER_SYMBOL(HyperlossUniformLossCuda, uniform_loss_cuda,
                              uniform_signature(ffi::Ffi::Bind()
                                                    .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                                    .Ctx<ffi::ScratchAllocator>()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(HyperlossAlignCuda, align_cuda,
                              align_signature(ffi::Ffi::Bind()
                                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                                  .Ctx<ffi::ScratchAllocator>()));
#endif
