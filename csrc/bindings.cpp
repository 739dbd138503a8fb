// Python bindings of ntm_fast._C: each function checks its tensors and runs the CPU or the CUDA kernels by
// the memory's device. Heads arrive as lists [key, beta, gate, shift, gamma, w_prev]; the addressing entries
// take reference.COSINE_EPS and reference.sharpen_floor(dtype) as cosine_eps and sharpen_floor. Every argument
// has its name (keyword calls work). The launchers are ntm_fast/ops/extension.py; autograd and torch.library live in ntm_fast/ops/autograd.py.
#include <torch/extension.h>

#include <vector>

#include "ntm.h"

namespace {

using ntm::HeadTensors;
using Tensors = std::vector<at::Tensor>;

HeadTensors heads(const Tensors& t) {
  TORCH_CHECK(t.size() == 6, "ntm_fast._C: expected 6 head tensors (key, beta, gate, shift, gamma, w_prev), got ",
              t.size());
  return {t[0], t[1], t[2], t[3], t[4], t[5]};
}

// Every tensor contiguous and of the memory's dtype and device; true when that device is CUDA.
bool check(const at::Tensor& memory, std::initializer_list<Tensors> groups) {
  TORCH_CHECK(memory.scalar_type() == at::kFloat || memory.scalar_type() == at::kDouble,
              "ntm_fast._C: float32 or float64 tensors expected, got ", memory.scalar_type());
  for (const Tensors& group : groups)
    for (const at::Tensor& t : group)
      TORCH_CHECK(t.is_contiguous() && t.scalar_type() == memory.scalar_type() && t.device() == memory.device(),
                  "ntm_fast._C: every tensor must be contiguous, ", memory.scalar_type(), " and on ",
                  memory.device(), "; got one of shape ", t.sizes(), ", ", t.scalar_type(), " on ", t.device());
#ifdef NTM_WITH_CUDA
  return memory.is_cuda();
#else
  TORCH_CHECK(memory.is_cpu(), "ntm_fast._C was built without CUDA; got tensors on ", memory.device());
  return false;
#endif
}

#ifdef NTM_WITH_CUDA
#define NTM_RUN(on_cuda, fn, ...) ((on_cuda) ? ntm::cuda::fn(__VA_ARGS__) : ntm::cpu::fn(__VA_ARGS__))
#else
#define NTM_RUN(on_cuda, fn, ...) ((void)(on_cuda), ntm::cpu::fn(__VA_ARGS__))
#endif

void address_forward(const at::Tensor& memory, const Tensors& h, const at::Tensor& w, double cosine_eps,
                     double sharpen_floor) {
  NTM_RUN(check(memory, {h, {w}}), address_forward, memory, heads(h), w, cosine_eps, sharpen_floor);
}

void address_backward(const at::Tensor& memory, const Tensors& h, const at::Tensor& grad_w,
                      const at::Tensor& d_memory, const Tensors& d_h, double cosine_eps, double sharpen_floor) {
  NTM_RUN(check(memory, {h, d_h, {grad_w, d_memory}}), address_backward, memory, heads(h), grad_w, d_memory,
          heads(d_h), cosine_eps, sharpen_floor);
}

void read_forward(const at::Tensor& memory, const at::Tensor& w, const at::Tensor& r) {
  NTM_RUN(check(memory, {{w, r}}), read_forward, memory, w, r);
}

void read_backward(const at::Tensor& memory, const at::Tensor& w, const at::Tensor& grad_r,
                   const at::Tensor& d_memory, const at::Tensor& d_w) {
  NTM_RUN(check(memory, {{w, grad_r, d_memory, d_w}}), read_backward, memory, w, grad_r, d_memory, d_w);
}

void write_forward(const at::Tensor& memory, const at::Tensor& w, const at::Tensor& erase, const at::Tensor& add,
                   const at::Tensor& out) {
  NTM_RUN(check(memory, {{w, erase, add, out}}), write_forward, memory, w, erase, add, out);
}

void write_backward(const at::Tensor& memory, const at::Tensor& w, const at::Tensor& erase, const at::Tensor& add,
                    const at::Tensor& grad_out, const at::Tensor& d_memory, const at::Tensor& d_w,
                    const at::Tensor& d_erase, const at::Tensor& d_add) {
  NTM_RUN(check(memory, {{w, erase, add, grad_out, d_memory, d_w, d_erase, d_add}}), write_backward, memory, w,
          erase, add, grad_out, d_memory, d_w, d_erase, d_add);
}

// memory_step takes its [B, N, M] memory tensors (memory, new memory, their gradients) in either layout:
// kernel_memory (ntm.h) tells the kernels which.
void memory_step_forward(const at::Tensor& memory, const Tensors& rh, const Tensors& wh, const at::Tensor& erase,
                         const at::Tensor& add, const at::Tensor& reads, const at::Tensor& w_read,
                         const at::Tensor& w_write, const at::Tensor& new_memory, double cosine_eps,
                         double sharpen_floor) {
  const auto [mem, memory_t] = ntm::kernel_memory(memory);
  const auto [out, new_memory_t] = ntm::kernel_memory(new_memory, true);
  NTM_RUN(check(mem, {rh, wh, {erase, add, reads, w_read, w_write, out}}), memory_step_forward, mem, heads(rh),
          heads(wh), erase, add, reads, w_read, w_write, out, memory_t, new_memory_t, cosine_eps, sharpen_floor);
}

void memory_step_backward(const at::Tensor& memory, const Tensors& rh, const Tensors& wh, const at::Tensor& erase,
                          const at::Tensor& add, const at::Tensor& grad_reads, const at::Tensor& grad_w_read,
                          const at::Tensor& grad_w_write, const at::Tensor& grad_new_memory,
                          const at::Tensor& d_memory, const Tensors& d_rh, const Tensors& d_wh,
                          const at::Tensor& d_erase, const at::Tensor& d_add, double cosine_eps,
                          double sharpen_floor) {
  const auto [mem, memory_t] = ntm::kernel_memory(memory);
  const auto [grad, grad_t] = ntm::kernel_memory(grad_new_memory);
  const auto [d_mem, d_memory_t] = ntm::kernel_memory(d_memory, true);
  TORCH_CHECK(d_memory_t == memory_t, "ntm_fast._C: d_memory must have the memory's layout");
  NTM_RUN(check(mem, {rh, wh, d_rh, d_wh,
                      {erase, add, grad_reads, grad_w_read, grad_w_write, grad, d_mem, d_erase, d_add}}),
          memory_step_backward, mem, heads(rh), heads(wh), erase, add, grad_reads, grad_w_read, grad_w_write, grad,
          d_mem, heads(d_rh), heads(d_wh), d_erase, d_add, memory_t, grad_t, cosine_eps, sharpen_floor);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using pybind11::arg;
  m.doc() = "ntm_fast's fused NTM memory kernels (CPU, and CUDA when built with it); outputs are arguments";
#ifdef NTM_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
  m.def("address_forward", &address_forward, "Eq 5-9: w [B,H,N]", arg("memory"), arg("heads"), arg("w"),
        arg("cosine_eps"), arg("sharpen_floor"));
  m.def("address_backward", &address_backward, "gradients of address: d_memory and the head gradients",
        arg("memory"), arg("heads"), arg("grad_w"), arg("d_memory"), arg("d_heads"), arg("cosine_eps"),
        arg("sharpen_floor"));
  m.def("read_forward", &read_forward, "Eq 2: r [B,H,M]", arg("memory"), arg("w"), arg("r"));
  m.def("read_backward", &read_backward, "gradients of read: d_memory, d_w", arg("memory"), arg("w"),
        arg("grad_r"), arg("d_memory"), arg("d_w"));
  m.def("write_forward", &write_forward, "Eq 3-4: new memory [B,N,M]", arg("memory"), arg("w"), arg("erase"),
        arg("add"), arg("out"));
  m.def("write_backward", &write_backward, "gradients of write: d_memory, d_w, d_erase, d_add", arg("memory"),
        arg("w"), arg("erase"), arg("add"), arg("grad_out"), arg("d_memory"), arg("d_w"), arg("d_erase"),
        arg("d_add"));
  m.def("memory_step_forward", &memory_step_forward,
        "one step: reads, w_read, w_write, new memory (memory tensors row-major or slot-minor)", arg("memory"),
        arg("read_heads"), arg("write_heads"), arg("erase"), arg("add"), arg("reads"), arg("w_read"),
        arg("w_write"), arg("new_memory"), arg("cosine_eps"), arg("sharpen_floor"));
  m.def("memory_step_backward", &memory_step_backward,
        "gradients of memory_step (d_memory in the memory's layout)", arg("memory"), arg("read_heads"),
        arg("write_heads"), arg("erase"), arg("add"), arg("grad_reads"), arg("grad_w_read"), arg("grad_w_write"),
        arg("grad_new_memory"), arg("d_memory"), arg("d_read_heads"), arg("d_write_heads"), arg("d_erase"),
        arg("d_add"), arg("cosine_eps"), arg("sharpen_floor"));
  m.def("step_forward", &ntm::step_forward, "one whole fused NTM time step (CPU): outputs, then saved tensors",
        arg("x"), arg("h_prev"), arg("c_prev"), arg("reads_prev"), arg("w_read_prev"), arg("w_write_prev"),
        arg("memory"), arg("W_ih"), arg("b_ih"), arg("W_hh"), arg("b_hh"), arg("W_hd"), arg("b_hd"), arg("W_out"),
        arg("b_out"), arg("head_sizes"), arg("cosine_eps"), arg("sharpen_floor"));
  m.def("step_backward", &ntm::step_backward,
        "its backward: input and state gradients, then weight gradients", arg("d_logits"), arg("d_h"), arg("d_c"),
        arg("d_reads"), arg("d_w_read"), arg("d_w_write"), arg("d_new_memory"), arg("memory"), arg("w_read_prev"),
        arg("w_write_prev"), arg("heads"), arg("u"), arg("h_prev"), arg("c_prev"), arg("h"), arg("tanh_c"),
        arg("gates"), arg("p"), arg("hr"), arg("W_ih"), arg("W_hh"), arg("W_hd"), arg("W_out"), arg("head_sizes"),
        arg("cosine_eps"), arg("sharpen_floor"));
  pybind11::class_<ntm::SequenceTape, std::shared_ptr<ntm::SequenceTape>>(
      m, "SequenceTape", "what sequence_forward keeps for sequence_backward (opaque)");
  m.def("sequence_forward", &ntm::sequence_forward,
        "a whole sequence through the fused step (CPU), a batch chunk per thread: logits [T,B,Y] and the tape",
        arg("x"), arg("h0"), arg("c0"), arg("reads0"), arg("w_read0"), arg("w_write0"), arg("memory0"), arg("W_ih"),
        arg("b_ih"), arg("W_hh"), arg("b_hh"), arg("W_hd"), arg("b_hd"), arg("W_out"), arg("b_out"),
        arg("head_sizes"), arg("cosine_eps"), arg("sharpen_floor"), arg("keep_tape"));
  m.def("sequence_backward", &ntm::sequence_backward,
        "its backward: d_x, the initial state's gradients, then the weight gradients summed over time", arg("tape"),
        arg("d_logits"), arg("W_ih"), arg("W_hh"), arg("W_hd"), arg("W_out"));
}
