// Autograd of fake_quant and fake_quant_binary, in C++ so that a forward+backward costs no Python
// round trip (the formulas registered from Python took ~190 us of host time per call; on a GPU that
// is longer than the kernels up to 16M elements). The backward ops carry the formulas.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace qcnn::ops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using FakeQuantSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t,
                                c10::optional<int64_t>);
using FakeQuantBackwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t,
    c10::optional<int64_t>, double, bool);
using BinarySig = at::Tensor(const at::Tensor&, c10::optional<int64_t>);
using BinaryBackwardSig = at::Tensor(const at::Tensor&, const at::Tensor&, c10::optional<int64_t>);

template <typename Sig>
c10::TypedOperatorHandle<Sig> op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

c10::optional<int64_t> saved_axis(AutogradContext* ctx) {
  const c10::IValue& axis = ctx->saved_data["axis"];
  return axis.isNone() ? c10::nullopt : c10::optional<int64_t>(axis.toInt());
}

class FakeQuantFunction : public torch::autograd::Function<FakeQuantFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& scale,
                            const at::Tensor& zero_point, int64_t qmin, int64_t qmax, c10::optional<int64_t> axis) {
    static const auto op = op_handle<FakeQuantSig>("qcnn::fake_quant");
    ctx->save_for_backward({x, scale, zero_point});
    ctx->saved_data["qmin"] = qmin;
    ctx->saved_data["qmax"] = qmax;
    ctx->saved_data["axis"] = axis;
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    return op.call(x, scale, zero_point, qmin, qmax, axis);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = op_handle<FakeQuantBackwardSig>("qcnn::fake_quant_backward");
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &scale = saved[1], &zero_point = saved[2];
    const bool need_scale = ctx->needs_input_grad(1), need_zero_point = ctx->needs_input_grad(2);
    auto [gx, gs, gz] = op.call(grads[0].contiguous(), x, scale, zero_point, ctx->saved_data["qmin"].toInt(),
                                ctx->saved_data["qmax"].toInt(), saved_axis(ctx), 1.0,
                                need_scale || need_zero_point);
    return {gx, need_scale ? gs.reshape(scale.sizes()) : at::Tensor(),
            need_zero_point ? gz.reshape(zero_point.sizes()).to(zero_point.scalar_type()) : at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class FakeQuantBinaryFunction : public torch::autograd::Function<FakeQuantBinaryFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& w, c10::optional<int64_t> axis) {
    static const auto op = op_handle<BinarySig>("qcnn::fake_quant_binary");
    ctx->save_for_backward({w});
    ctx->saved_data["axis"] = axis;
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    return op.call(w, axis);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = op_handle<BinaryBackwardSig>("qcnn::fake_quant_binary_backward");
    const variable_list saved = ctx->get_saved_variables();
    return {op.call(grads[0].contiguous(), saved[0], saved_axis(ctx)), at::Tensor()};
  }
};

at::Tensor fake_quant_autograd(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point, int64_t qmin,
                               int64_t qmax, c10::optional<int64_t> axis) {
  return FakeQuantFunction::apply(x, scale, zero_point, qmin, qmax, axis);
}

at::Tensor fake_quant_binary_autograd(const at::Tensor& w, c10::optional<int64_t> axis) {
  return FakeQuantBinaryFunction::apply(w, axis);
}

}  // namespace

TORCH_LIBRARY_IMPL(qcnn, Autograd, m) {
  m.impl("fake_quant", &fake_quant_autograd);
  m.impl("fake_quant_binary", &fake_quant_binary_autograd);
}

}  // namespace qcnn::ops
