// The extension's entry points. Every tensor is contiguous, of one dtype (float32 or float64) and on one
// device; outputs are allocated by the caller (ntm_fast/ops/extension.py) and every element of each is written.
// The addressing entries (address, memory_step) take reference.COSINE_EPS and reference.sharpen_floor(dtype)
// as cosine_eps and sharpen_floor (ntm_math.h's Numerics). memory_step's `*_t` flags say that a [B, N, M]
// memory (or its gradient) is passed as its slot-minor storage [B, M, N] (CPU only; memory_step's CPU kernels
// return new memory that way): see kernel_memory.
// Shapes as in ntm_fast/ops.py: B batch, H heads, N slots, M slot width, K = 2S+1 shift offsets.
#pragma once

#include <ATen/ATen.h>

#include "ntm_math.h"

#include <memory>
#include <utility>
#include <vector>

namespace ntm {

// The [B, H, ...] tensors of H heads: key [B,H,M], beta/gate/gamma [B,H], shift [B,H,K], w_prev [B,H,N]
// (or, as an output, their gradients).
struct HeadTensors {
  at::Tensor key, beta, gate, shift, gamma, w_prev;
};

// Their raw pointers as the kernels take them (ntm_math.h's Heads): P = const T* for the parameters, T* for
// gradients.
template <typename T, typename P = const T*>
Heads<P> heads_of(const HeadTensors& t) {
  return {t.key.data_ptr<T>(), t.beta.data_ptr<T>(),  t.gate.data_ptr<T>(), t.shift.data_ptr<T>(),
          t.gamma.data_ptr<T>(), t.w_prev.data_ptr<T>(), t.key.size(1)};
}

template <typename T>
HeadGrads<T> grads_of(const HeadTensors& t) {
  return heads_of<T, T*>(t);
}

// Declared once per device namespace (cpu, and cuda when built with CUDA): the same functions.
#define NTM_DECLARE_OPS                                                                                          \
  void address_forward(const at::Tensor& memory, const HeadTensors& heads, const at::Tensor& w, double cosine_eps, \
                       double sharpen_floor);                                                                    \
  void address_backward(const at::Tensor& memory, const HeadTensors& heads, const at::Tensor& grad_w,            \
                        const at::Tensor& d_memory, const HeadTensors& d_heads, double cosine_eps,               \
                        double sharpen_floor);                                                                   \
  void read_forward(const at::Tensor& memory, const at::Tensor& w, const at::Tensor& r);                         \
  void read_backward(const at::Tensor& memory, const at::Tensor& w, const at::Tensor& grad_r,                    \
                     const at::Tensor& d_memory, const at::Tensor& d_w);                                         \
  void write_forward(const at::Tensor& memory, const at::Tensor& w, const at::Tensor& erase,                     \
                     const at::Tensor& add, const at::Tensor& out);                                              \
  void write_backward(const at::Tensor& memory, const at::Tensor& w, const at::Tensor& erase,                    \
                      const at::Tensor& add, const at::Tensor& grad_out, const at::Tensor& d_memory,             \
                      const at::Tensor& d_w, const at::Tensor& d_erase, const at::Tensor& d_add);                \
  void memory_step_forward(const at::Tensor& memory, const HeadTensors& read_heads,                              \
                           const HeadTensors& write_heads, const at::Tensor& erase, const at::Tensor& add,       \
                           const at::Tensor& reads, const at::Tensor& w_read, const at::Tensor& w_write,         \
                           const at::Tensor& new_memory, bool memory_t, bool new_memory_t, double cosine_eps,    \
                           double sharpen_floor);                                                                \
  void memory_step_backward(const at::Tensor& memory, const HeadTensors& read_heads,                             \
                            const HeadTensors& write_heads, const at::Tensor& erase, const at::Tensor& add,      \
                            const at::Tensor& grad_reads, const at::Tensor& grad_w_read,                         \
                            const at::Tensor& grad_w_write, const at::Tensor& grad_new_memory,                   \
                            const at::Tensor& d_memory, const HeadTensors& d_read_heads,                         \
                            const HeadTensors& d_write_heads, const at::Tensor& d_erase, const at::Tensor& d_add,  \
                            bool memory_t, bool grad_new_memory_t, double cosine_eps, double sharpen_floor);

// A [B, N, M] memory or memory gradient as the kernels take it, and whether it is slot-minor: on CPU a
// slot-minor tensor (strides [N·M, 1, N], memory_step's own output layout) as its [B, M, N] storage, anything
// else row-major (`output`: it must already be, since a copy would not reach the caller).
inline std::pair<at::Tensor, bool> kernel_memory(const at::Tensor& x, bool output = false) {
  const at::Tensor xt = x.transpose(1, 2);
  if (x.is_cpu() && !x.is_contiguous() && xt.is_contiguous()) return {xt, true};
  TORCH_CHECK(!output || x.is_contiguous(), "ntm_fast._C: a memory output must be row-major or slot-minor, got strides ",
              x.strides());
  return {output ? x : x.contiguous(), false};
}

namespace cpu {
NTM_DECLARE_OPS
}  // namespace cpu

// The whole fused time step (ntm_cell.cpp): cell_head_forward, the memory_step kernels, the output layer.
// head_sizes: how the head layer's output splits (NTMCell.head_sizes), [key H·M, β H, g H, s H·K, γ H,
// erase W·M, add W·M]; cosine_eps and sharpen_floor as for memory_step.
std::vector<at::Tensor> step_forward(const at::Tensor& x, const c10::optional<at::Tensor>& h_prev,
                                     const c10::optional<at::Tensor>& c_prev, const at::Tensor& reads_prev,
                                     const at::Tensor& w_read_prev, const at::Tensor& w_write_prev,
                                     const at::Tensor& memory, const at::Tensor& W_ih, const at::Tensor& b_ih,
                                     const c10::optional<at::Tensor>& W_hh, const c10::optional<at::Tensor>& b_hh,
                                     const at::Tensor& W_hd, const at::Tensor& b_hd, const at::Tensor& W_out,
                                     const at::Tensor& b_out, const std::vector<int64_t>& head_sizes,
                                     double cosine_eps, double sharpen_floor);
std::vector<at::Tensor> step_backward(const at::Tensor& d_logits, const at::Tensor& d_h_in,
                                      const c10::optional<at::Tensor>& d_c, const at::Tensor& d_reads_in,
                                      const at::Tensor& d_w_read, const at::Tensor& d_w_write,
                                      const at::Tensor& d_new_memory, const at::Tensor& memory,
                                      const at::Tensor& w_read_prev, const at::Tensor& w_write_prev,
                                      const std::vector<at::Tensor>& heads, const at::Tensor& u,
                                      const c10::optional<at::Tensor>& h_prev,
                                      const c10::optional<at::Tensor>& c_prev, const at::Tensor& h,
                                      const at::Tensor& tanh_c, const at::Tensor& gates, const at::Tensor& p,
                                      const at::Tensor& hr, const at::Tensor& W_ih,
                                      const c10::optional<at::Tensor>& W_hh, const at::Tensor& W_hd,
                                      const at::Tensor& W_out, const std::vector<int64_t>& head_sizes,
                                      double cosine_eps, double sharpen_floor);

// A whole sequence through the fused step (ntm_cell.cpp; ntm_fast/ops/autograd.py FusedSequence): the batch is cut
// into one chunk per thread and each thread runs its chunk through every time step alone, so that nothing
// joins the threads between steps. The tape is what the forward keeps for the backward: each chunk's initial
// state (h, c, reads, w_read, w_write, memory; h and c unused for a feedforward controller) and every step's
// step_forward result.
struct SequenceTape {
  std::vector<int64_t> head_sizes;  // as step_forward takes them
  double cosine_eps = 0, sharpen_floor = 0;
  int64_t X = 0;  // input width
  bool lstm = false;
  std::vector<int64_t> bounds;                              // chunk c holds batch rows [bounds[c], bounds[c+1])
  std::vector<std::vector<at::Tensor>> init;                // [chunk] -> initial state
  std::vector<std::vector<std::vector<at::Tensor>>> steps;  // [chunk][t] -> step_forward's result
};
std::pair<at::Tensor, std::shared_ptr<SequenceTape>> sequence_forward(
    const at::Tensor& x, const c10::optional<at::Tensor>& h0, const c10::optional<at::Tensor>& c0,
    const at::Tensor& reads0, const at::Tensor& w_read0, const at::Tensor& w_write0, const at::Tensor& memory0,
    const at::Tensor& W_ih, const at::Tensor& b_ih, const c10::optional<at::Tensor>& W_hh,
    const c10::optional<at::Tensor>& b_hh, const at::Tensor& W_hd, const at::Tensor& b_hd, const at::Tensor& W_out,
    const at::Tensor& b_out, const std::vector<int64_t>& head_sizes, double cosine_eps, double sharpen_floor,
    bool keep_tape);
std::vector<at::Tensor> sequence_backward(const SequenceTape& tape, const at::Tensor& d_logits, const at::Tensor& W_ih,
                                          const c10::optional<at::Tensor>& W_hh, const at::Tensor& W_hd,
                                          const at::Tensor& W_out);

#ifdef NTM_WITH_CUDA
namespace cuda {
NTM_DECLARE_OPS
}  // namespace cuda
#endif

#undef NTM_DECLARE_OPS

}  // namespace ntm
