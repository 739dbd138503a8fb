// The CUDA entry points (ntm.h, namespace ntm::cuda): tensors to raw pointers, the current stream, and a
// readable error if a launch fails. Compiled only in CUDA builds (NTM_WITH_CUDA), with torch's CUDA headers.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "ntm.h"
#include "ntm_cuda_kernels.h"

namespace ntm {
namespace cuda {
namespace {

namespace k = ntm::cuda_kernels;

k::Sizes sizes_of(const at::Tensor& memory, int64_t K) {
  return {int(memory.size(0)), int(memory.size(1)), int(memory.size(2)), int(K)};
}

// Runs `launch(scalar_t)` on the memory's device and stream; a failed launch raises.
template <typename F>
void run(const char* op, const at::Tensor& memory, F&& launch) {
  TORCH_CHECK(memory.size(0) <= INT32_MAX && memory.numel() <= INT32_MAX,
              "ntm_fast cuda: ", op, ": tensors too large for 32-bit sizes");
  const c10::cuda::CUDAGuard guard(memory.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(memory.device().index()).stream();
  cudaError_t err = cudaSuccess;
  AT_DISPATCH_FLOATING_TYPES(memory.scalar_type(), "ntm_fast_cuda", [&] { err = launch(scalar_t(0), stream); });
  TORCH_CHECK(err == cudaSuccess, "ntm_fast cuda: ", op, " failed: ", cudaGetErrorString(err),
              err == cudaErrorInvalidConfiguration ? " (too many memory slots for one block's shared memory)" : "");
}

}  // namespace

void address_forward(const at::Tensor& memory, const HeadTensors& heads, const at::Tensor& w, double cosine_eps,
                     double sharpen_floor) {
  run("address_forward", memory, [&](auto zero, cudaStream_t stream) {
    using T = decltype(zero);
    return k::address_forward<T>(memory.data_ptr<T>(), heads_of<T>(heads), w.data_ptr<T>(),
                                 numerics<T>(cosine_eps, sharpen_floor), sizes_of(memory, heads.shift.size(2)),
                                 stream);
  });
}

void address_backward(const at::Tensor& memory, const HeadTensors& heads, const at::Tensor& grad_w,
                      const at::Tensor& d_memory, const HeadTensors& d_heads, double cosine_eps,
                      double sharpen_floor) {
  run("address_backward", memory, [&](auto zero, cudaStream_t stream) {
    using T = decltype(zero);
    return k::address_backward<T>(memory.data_ptr<T>(), heads_of<T>(heads), grad_w.data_ptr<T>(),
                                  d_memory.data_ptr<T>(), grads_of<T>(d_heads),
                                  numerics<T>(cosine_eps, sharpen_floor), sizes_of(memory, heads.shift.size(2)),
                                  stream);
  });
}

void read_forward(const at::Tensor& memory, const at::Tensor& w, const at::Tensor& r) {
  run("read_forward", memory, [&](auto zero, cudaStream_t stream) {
    using T = decltype(zero);
    return k::read_forward<T>(memory.data_ptr<T>(), w.data_ptr<T>(), int(w.size(1)), r.data_ptr<T>(),
                              sizes_of(memory, 1), stream);
  });
}

void read_backward(const at::Tensor& memory, const at::Tensor& w, const at::Tensor& grad_r,
                   const at::Tensor& d_memory, const at::Tensor& d_w) {
  run("read_backward", memory, [&](auto zero, cudaStream_t stream) {
    using T = decltype(zero);
    return k::read_backward<T>(memory.data_ptr<T>(), w.data_ptr<T>(), int(w.size(1)), grad_r.data_ptr<T>(),
                               d_memory.data_ptr<T>(), d_w.data_ptr<T>(), sizes_of(memory, 1), stream);
  });
}

void write_forward(const at::Tensor& memory, const at::Tensor& w, const at::Tensor& erase, const at::Tensor& add,
                   const at::Tensor& out) {
  run("write_forward", memory, [&](auto zero, cudaStream_t stream) {
    using T = decltype(zero);
    return k::write_forward<T>(memory.data_ptr<T>(), w.data_ptr<T>(), erase.data_ptr<T>(), add.data_ptr<T>(),
                               int(w.size(1)), out.data_ptr<T>(), sizes_of(memory, 1), stream);
  });
}

void write_backward(const at::Tensor& memory, const at::Tensor& w, const at::Tensor& erase, const at::Tensor& add,
                    const at::Tensor& grad_out, const at::Tensor& d_memory, const at::Tensor& d_w,
                    const at::Tensor& d_erase, const at::Tensor& d_add) {
  run("write_backward", memory, [&](auto zero, cudaStream_t stream) {
    using T = decltype(zero);
    return k::write_backward<T>(memory.data_ptr<T>(), w.data_ptr<T>(), erase.data_ptr<T>(), add.data_ptr<T>(),
                                int(w.size(1)), grad_out.data_ptr<T>(), d_memory.data_ptr<T>(), d_w.data_ptr<T>(),
                                d_erase.data_ptr<T>(), d_add.data_ptr<T>(), sizes_of(memory, 1), stream);
  });
}

void memory_step_forward(const at::Tensor& memory, const HeadTensors& read_heads, const HeadTensors& write_heads,
                         const at::Tensor& erase, const at::Tensor& add, const at::Tensor& reads,
                         const at::Tensor& w_read, const at::Tensor& w_write, const at::Tensor& new_memory,
                         bool memory_t, bool new_memory_t, double cosine_eps, double sharpen_floor) {
  TORCH_CHECK(!memory_t && !new_memory_t, "ntm_fast._C: the CUDA kernels take row-major [B, N, M] memory");
  run("memory_step_forward", memory, [&](auto zero, cudaStream_t stream) {
    using T = decltype(zero);
    return k::memory_step_forward<T>(memory.data_ptr<T>(), heads_of<T>(read_heads), heads_of<T>(write_heads),
                                     erase.data_ptr<T>(), add.data_ptr<T>(), reads.data_ptr<T>(), w_read.data_ptr<T>(),
                                     w_write.data_ptr<T>(), new_memory.data_ptr<T>(),
                                     numerics<T>(cosine_eps, sharpen_floor), sizes_of(memory, read_heads.shift.size(2)),
                                     stream);
  });
}

void memory_step_backward(const at::Tensor& memory, const HeadTensors& read_heads, const HeadTensors& write_heads,
                          const at::Tensor& erase, const at::Tensor& add, const at::Tensor& grad_reads,
                          const at::Tensor& grad_w_read, const at::Tensor& grad_w_write,
                          const at::Tensor& grad_new_memory, const at::Tensor& d_memory,
                          const HeadTensors& d_read_heads, const HeadTensors& d_write_heads,
                          const at::Tensor& d_erase, const at::Tensor& d_add, bool memory_t,
                          bool grad_new_memory_t, double cosine_eps, double sharpen_floor) {
  TORCH_CHECK(!memory_t && !grad_new_memory_t, "ntm_fast._C: the CUDA kernels take row-major [B, N, M] memory");
  run("memory_step_backward", memory, [&](auto zero, cudaStream_t stream) {
    using T = decltype(zero);
    return k::memory_step_backward<T>(
        memory.data_ptr<T>(), heads_of<T>(read_heads), heads_of<T>(write_heads), erase.data_ptr<T>(),
        add.data_ptr<T>(), grad_reads.data_ptr<T>(), grad_w_read.data_ptr<T>(), grad_w_write.data_ptr<T>(),
        grad_new_memory.data_ptr<T>(), d_memory.data_ptr<T>(), grads_of<T>(d_read_heads),
        grads_of<T>(d_write_heads), d_erase.data_ptr<T>(), d_add.data_ptr<T>(),
        numerics<T>(cosine_eps, sharpen_floor), sizes_of(memory, read_heads.shift.size(2)), stream);
  });
}

}  // namespace cuda
}  // namespace ntm
