// Launchers of the CUDA kernels (ntm_cuda_kernels.cu). Free of torch headers, so the .cu compiles with nvcc
// alone; ntm_cuda.cpp passes raw pointers of contiguous tensors, the sizes and the current stream.
// Every launcher returns cudaSuccess or the error of the launch (too much shared memory included). Heads are
// ntm_math.h's HeadParams (and HeadGrads for their gradients); the addressing launchers take its Numerics (ε and
// the sharpening floor).
#pragma once

#include <cuda_runtime.h>

#include "ntm_math.h"

namespace ntm {
namespace cuda_kernels {

struct Sizes {
  int B, N, M, K;  // batch, slots, slot width, shift offsets 2S+1
};

template <typename T>
cudaError_t address_forward(const T* memory, HeadParams<T> heads, T* w, Numerics<T> num, Sizes s,
                            cudaStream_t stream);
template <typename T>
cudaError_t address_backward(const T* memory, HeadParams<T> heads, const T* grad_w, T* d_memory, HeadGrads<T> d_heads,
                             Numerics<T> num, Sizes s, cudaStream_t stream);
template <typename T>
cudaError_t read_forward(const T* memory, const T* w, int H, T* r, Sizes s, cudaStream_t stream);
template <typename T>
cudaError_t read_backward(const T* memory, const T* w, int H, const T* grad_r, T* d_memory, T* d_w, Sizes s,
                          cudaStream_t stream);
template <typename T>
cudaError_t write_forward(const T* memory, const T* w, const T* erase, const T* add, int W, T* out, Sizes s,
                          cudaStream_t stream);
template <typename T>
cudaError_t write_backward(const T* memory, const T* w, const T* erase, const T* add, int W, const T* grad_out,
                           T* d_memory, T* d_w, T* d_erase, T* d_add, Sizes s, cudaStream_t stream);
template <typename T>
cudaError_t memory_step_forward(const T* memory, HeadParams<T> read_heads, HeadParams<T> write_heads, const T* erase,
                                const T* add, T* reads, T* w_read, T* w_write, T* new_memory, Numerics<T> num,
                                Sizes s, cudaStream_t stream);
template <typename T>
cudaError_t memory_step_backward(const T* memory, HeadParams<T> read_heads, HeadParams<T> write_heads, const T* erase,
                                 const T* add, const T* grad_reads, const T* grad_w_read, const T* grad_w_write,
                                 const T* grad_new_memory, T* d_memory, HeadGrads<T> d_read_heads,
                                 HeadGrads<T> d_write_heads, T* d_erase, T* d_add, Numerics<T> num, Sizes s,
                                 cudaStream_t stream);

}  // namespace cuda_kernels
}  // namespace ntm
