// XLA FFI handlers (CPU) over the hyperloss C API, for hyperloss/jax.py (jax.ffi.ffi_call).
//   hyperloss_uniform_lse(x, queue; t, intra_batch, with_grad) -> (lse, grad_x, grad_queue)
//   hyperloss_align(x, y; alpha, with_grad) -> (loss, grad_x)
// Arrays arrive contiguous and in float32 or float64 (the Python side converts half types). A queue with zero
// rows means no queue; without with_grad the gradient results have zero elements.
#include <cmath>

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

void store_scalar(ffi::Result<ffi::AnyBuffer>& out, double value) {
  if (out->element_type() == ffi::DataType::F64)
    *static_cast<double*>(out->untyped_data()) = value;
  else
    *static_cast<float*>(out->untyped_data()) = static_cast<float>(value);
}

ffi::Error uniform_lse(ffi::AnyBuffer x, ffi::AnyBuffer queue, double t, bool intra_batch, bool with_grad,
                       ffi::Result<ffi::AnyBuffer> lse, ffi::Result<ffi::AnyBuffer> grad_x,
                       ffi::Result<ffi::AnyBuffer> grad_queue) {
  if (!float_type(x.element_type()) || x.element_type() != queue.element_type() || x.dimensions().size() != 2)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "hyperloss: x and queue must be 2-D float32/float64");
  const hl_dtype dtype = x.element_type() == ffi::DataType::F64 ? HL_FLOAT64 : HL_FLOAT32;
  const hl_matrix q = matrix_of(queue);
  double value = 0;
  ffi::Error error = check(hl_uniform_lse_cpu(dtype, matrix_of(x), q, t, intra_batch, 0, &value,
                                              with_grad ? grad_x->untyped_data() : nullptr,
                                              with_grad && q.data ? grad_queue->untyped_data() : nullptr));
  if (error.failure()) return error;
  store_scalar(lse, value);
  return ffi::Error::Success();
}

ffi::Error align(ffi::AnyBuffer x, ffi::AnyBuffer y, double alpha, bool with_grad, ffi::Result<ffi::AnyBuffer> loss,
                 ffi::Result<ffi::AnyBuffer> grad_x) {
  if (!float_type(x.element_type()) || x.element_type() != y.element_type() || x.dimensions().size() != 2)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "hyperloss: x and y must be 2-D float32/float64");
  const hl_dtype dtype = x.element_type() == ffi::DataType::F64 ? HL_FLOAT64 : HL_FLOAT32;
  double value = 0;
  ffi::Error error = check(hl_align_cpu(dtype, matrix_of(x), matrix_of(y), alpha, 0, &value,
                                        with_grad ? grad_x->untyped_data() : nullptr));
  if (error.failure()) return error;
  store_scalar(loss, value);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(HyperlossUniformLse, uniform_lse,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Attr<double>("t")
                                  .Attr<bool>("intra_batch")
                                  .Attr<bool>("with_grad")
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(HyperlossAlign, align,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Attr<double>("alpha")
                                  .Attr<bool>("with_grad")
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>());
