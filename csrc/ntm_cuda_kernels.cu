// CUDA kernels of the NTM memory ops (address, read, write, memory_step), forward and backward.
//
// The per-element math is ntm_math.h's, shared with ntm_cpu.cpp (equation numbers of Graves, Wayne & Danihelka
// 2014, arXiv:1410.5401; conventions of ntm_fast/reference.py, whose ε and sharpening floor arrive as
// Numerics). One thread block per batch item: the item's memory tile (N×M) is
// copied to shared memory when it fits (else read through L1 from global memory), every head's N-vectors
// live in shared memory, similarities and per-column sums are warp reductions (a warp per row or column),
// softmax max/sum are block reductions. Backward recomputes the addressing intermediates from the inputs.
// No torch headers here: ntm_cuda.cpp passes raw pointers and the stream.
#include "ntm_cuda_kernels.h"

namespace ntm {
namespace cuda_kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

__device__ __forceinline__ float exp_(float x) { return expf(x); }
__device__ __forceinline__ double exp_(double x) { return exp(x); }
__device__ __forceinline__ float log_(float x) { return logf(x); }
__device__ __forceinline__ double log_(double x) { return log(x); }
// a·b rounded on its own, never contracted into an FMA with what follows (see block_softmax).
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Block-wide sum (or max); every thread gets the result. `red` is shared scratch of kWarps entries.
template <typename T, bool kMax = false>
__device__ T block_reduce(T v, T* red) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    const T other = __shfl_xor_sync(0xffffffffu, v, offset);
    v = kMax ? fmax(v, other) : v + other;
  }
  __syncthreads();  // the previous reduction's readers are done with red
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  T total = red[0];
  for (int w = 1; w < kWarps; ++w) total = kMax ? fmax(total, red[w]) : total + red[w];
  return total;
}

// Where each buffer of a block's shared memory starts, in elements, each right after the one before:
// reduction scratch, row norms, one trace and two backward buffers, the weightings and their gradients for H
// heads, and (when it fits) the memory tile. I: size_t for the size on the host (which checks it against the
// device's limit), int in the kernels (within that limit).
template <typename I>
struct SharedLayout {
  static constexpr int kTraceVectors = 5;  // a Trace's own [N] vectors (its w is elsewhere)
  static constexpr int kScratch = 2;       // [N] backward buffers
  I N, H;
  __host__ __device__ I red() const { return 0; }
  __host__ __device__ I mem_norm() const { return red() + kWarps; }
  __host__ __device__ I trace() const { return mem_norm() + N; }
  __host__ __device__ I scratch(int i) const { return trace() + (kTraceVectors + i) * N; }
  __host__ __device__ I w() const { return scratch(kScratch); }
  __host__ __device__ I d_w() const { return w() + H * N; }
  __host__ __device__ I tile() const { return d_w() + H * N; }  // also the size without the tile
};

size_t shared_elems(const Sizes& s, int H) { return SharedLayout<size_t>{size_t(s.N), size_t(H)}.tile(); }

extern __shared__ __align__(16) unsigned char ntm_shared[];

template <typename T>
struct Shared {
  T *red, *mem_norm, *buf, *w, *d_w;
  const T* mem;  // this item's memory [N, M]: the shared tile, or global memory
  int N;

  __device__ Trace<T> trace(T* w_out) const { return {buf, buf + N, buf + 2 * N, buf + 3 * N, buf + 4 * N, w_out}; }
  __device__ T* scratch(int i) const { return buf + (SharedLayout<int>::kTraceVectors + i) * N; }  // i < kScratch
};

// Carve shared memory for one item and load its memory tile.
template <typename T>
__device__ Shared<T> load_item(const T* memory, const Sizes& s, int H, bool tile) {
  T* p = reinterpret_cast<T*>(ntm_shared);
  const SharedLayout<int> at{s.N, H};
  Shared<T> sh;
  sh.N = s.N;
  sh.red = p + at.red();
  sh.mem_norm = p + at.mem_norm();
  sh.buf = p + at.trace();
  sh.w = p + at.w();
  sh.d_w = p + at.d_w();
  const size_t NM = size_t(s.N) * s.M;
  if (tile) {
    T* t = p + at.tile();
    for (size_t idx = threadIdx.x; idx < NM; idx += kThreads) t[idx] = memory[idx];
    sh.mem = t;
    __syncthreads();
  } else {
    sh.mem = memory;
  }
  return sh;
}

// The addressing ops' load_item: also the row norms ‖M[i]‖ = sqrt(Σ_m M[i,m]² + ε) (Eq 6), a warp per row.
template <typename T>
__device__ Shared<T> load_item_with_norms(const T* memory, const Sizes& s, int H, bool tile, const Numerics<T>& num) {
  const Shared<T> sh = load_item(memory, s, H, tile);
  const int lane = threadIdx.x & 31;
  for (int i = threadIdx.x >> 5; i < s.N; i += kWarps) {
    T sq = 0;
    for (int m = lane; m < s.M; m += 32) sq += sh.mem[size_t(i) * s.M + m] * sh.mem[size_t(i) * s.M + m];
    sq = warp_sum(sq);
    if (lane == 0) sh.mem_norm[i] = smoothed_norm(sq, num);
  }
  __syncthreads();
  return sh;
}

// y = softmax(scale · x) over N entries (x, y in shared or global memory); ends synchronized. Each product is
// rounded once (mul_rn), as the reference's: contracted into an FMA, scale·x[i] - max is the product's rounding
// error where it should be 0, e^error for β or γ ~ 1e10 and more, and the sum overflows (NaN weights).
template <typename T>
__device__ void block_softmax(const T* x, T scale, T* y, int N, T* red) {
  T mx = -INFINITY;
  for (int i = threadIdx.x; i < N; i += kThreads) mx = fmax(mx, mul_rn(scale, x[i]));
  mx = block_reduce<T, true>(mx, red);
  T sum = 0;
  for (int i = threadIdx.x; i < N; i += kThreads) {
    y[i] = exp_(mul_rn(scale, x[i]) - mx);
    sum += y[i];
  }
  const T inv = T(1) / block_reduce(sum, red);
  for (int i = threadIdx.x; i < N; i += kThreads) y[i] *= inv;
  __syncthreads();
}

template <typename T>
__device__ T key_norm_of(const T* key, const Sizes& s, const Numerics<T>& num, T* red) {
  T kk = 0;
  for (int m = threadIdx.x; m < s.M; m += kThreads) kk += key[m] * key[m];
  return smoothed_norm(block_reduce(kk, red), num);
}

// Eq 5-9 for one head: fills the trace (w last); ends synchronized.
template <typename T>
__device__ void address_head(const Shared<T>& sh, const Head<T>& p, const Sizes& s, const Numerics<T>& num,
                             const Trace<T>& t) {
  const int N = s.N, M = s.M, lane = threadIdx.x & 31;
  // Eq 6: K[i] = k·M[i] / (sqrt(‖k‖² + ε)·sqrt(‖M[i]‖² + ε)), a warp per row.
  const T key_norm = key_norm_of(p.key, s, num, sh.red);
  for (int i = threadIdx.x >> 5; i < N; i += kWarps) {
    T dot = 0;
    for (int m = lane; m < M; m += 32) dot += p.key[m] * sh.mem[size_t(i) * M + m];
    dot = warp_sum(dot);
    if (lane == 0) t.cos[i] = cosine(dot, key_norm, sh.mem_norm[i]);
  }
  __syncthreads();
  // Eq 5: w_c = softmax(β·K).
  block_softmax(t.cos, p.beta, t.w_c, N, sh.red);
  // Eq 7: w_g = g·w_c + (1 - g)·w_prev.
  for (int i = threadIdx.x; i < N; i += kThreads) t.w_g[i] = interpolate(p.gate, t.w_c[i], p.w_prev[i]);
  __syncthreads();
  // Eq 8: w_s[i] = Σ_j s[j+S]·w_g[(i - j) mod N]; then log max(w_s, floor) for Eq 9.
  for (int i = threadIdx.x; i < N; i += kThreads) {
    T acc = 0;
    for (int jj = 0; jj < s.K; ++jj) acc += p.shift[jj] * t.w_g[shift_source(i, shift_offset(jj, s.K, N), N)];
    t.w_s[i] = acc;
    t.log_w_s[i] = log_(sharpen_input(acc, num));
  }
  __syncthreads();
  // Eq 9: w = softmax(γ·log max(w_s, floor)) = w_s^γ / Σ w_s^γ.
  block_softmax(t.log_w_s, p.gamma, t.w, N, sh.red);
}

// Backward of address_head for the upstream gradient d_w [N]: writes the head's gradients and adds its part of
// the memory gradient to d_mem (global, [N, M]). Ends synchronized.
template <typename T>
__device__ void address_head_backward(const Shared<T>& sh, const Head<T>& p, const Sizes& s, const Numerics<T>& num,
                                      const Trace<T>& t, const T* d_w, const HeadGrad<T>& d, T* d_mem) {
  const int N = s.N, M = s.M;
  T* d_ws = sh.scratch(0);
  T* d_wg = sh.scratch(1);
  // Eq 9: du = w ⊙ (dw - <w, dw>); dγ = <du, log w_s>; dw_s = γ·du / w_s where w_s ≥ floor (else 0).
  T part = 0;
  for (int i = threadIdx.x; i < N; i += kThreads) part += t.w[i] * d_w[i];
  const T w_dw = block_reduce(part, sh.red);
  part = 0;
  for (int i = threadIdx.x; i < N; i += kThreads) {
    const T du = softmax_grad(t.w[i], d_w[i], w_dw);
    part += du * t.log_w_s[i];
    d_ws[i] = sharpen_input_grad(t.w_s[i], p.gamma, du, num);
  }
  part = block_reduce(part, sh.red);  // also publishes d_ws
  if (threadIdx.x == 0) *d.gamma = part;
  // Eq 8: ds[j+S] = Σ_i dw_s[i]·w_g[(i-j) mod N]; dw_g[n] = Σ_j s[j+S]·dw_s[(n+j) mod N].
  for (int jj = 0; jj < s.K; ++jj) {
    part = 0;
    const int o = shift_offset(jj, s.K, N);
    for (int i = threadIdx.x; i < N; i += kThreads) part += d_ws[i] * t.w_g[shift_source(i, o, N)];
    part = block_reduce(part, sh.red);
    if (threadIdx.x == 0) d.shift[jj] = part;
  }
  for (int n = threadIdx.x; n < N; n += kThreads) {
    T acc = 0;
    for (int jj = 0; jj < s.K; ++jj) acc += p.shift[jj] * d_ws[shift_source(n, N - shift_offset(jj, s.K, N), N)];
    d_wg[n] = acc;
  }
  // Eq 7: dg = <dw_g, w_c - w_prev>; dw_prev = (1 - g)·dw_g; dw_c = g·dw_g (kept in d_wg).
  part = 0;
  for (int i = threadIdx.x; i < N; i += kThreads) {
    part += interpolate_gate_grad(d_wg[i], t.w_c[i], p.w_prev[i]);
    d.w_prev[i] = interpolate_prev_grad(p.gate, d_wg[i]);
    d_wg[i] *= p.gate;
  }
  part = block_reduce(part, sh.red);
  if (threadIdx.x == 0) *d.gate = part;
  // Eq 5: dz = w_c ⊙ (dw_c - <w_c, dw_c>); dβ = <dz, K>; dK = β·dz (into d_ws, read by no one since Eq 8).
  part = 0;
  for (int i = threadIdx.x; i < N; i += kThreads) part += t.w_c[i] * d_wg[i];
  const T wc_dwc = block_reduce(part, sh.red);
  part = 0;
  for (int i = threadIdx.x; i < N; i += kThreads) {
    const T dz = softmax_grad(t.w_c[i], d_wg[i], wc_dwc);
    part += dz * t.cos[i];
    d_ws[i] = p.beta * dz;
  }
  part = block_reduce(part, sh.red);
  if (threadIdx.x == 0) *d.beta = part;
  // Eq 6 (cosine_memory_grad, cosine_key_grad_term): dM[i] += dK[i]/‖M[i]‖·(k̂ - K[i]·M̂[i]),
  // dk += dK[i]/‖k‖·(M̂[i] - K[i]·k̂).
  const T key_norm = key_norm_of(p.key, s, num, sh.red);
  for (int i = threadIdx.x; i < N; i += kThreads) d_wg[i] = d_ws[i] / sh.mem_norm[i];
  __syncthreads();
  const int lane = threadIdx.x & 31;
  for (int m = threadIdx.x >> 5; m < M; m += kWarps) {  // a warp per column
    const T k_unit = p.key[m] / key_norm;
    T dk = 0;
    for (int i = lane; i < N; i += 32)
      dk += cosine_key_grad_term(d_ws[i], sh.mem[size_t(i) * M + m] / sh.mem_norm[i], t.cos[i], k_unit);
    dk = warp_sum(dk);
    if (lane == 0) d.key[m] = dk / key_norm;
  }
  for (size_t idx = threadIdx.x; idx < size_t(N) * M; idx += kThreads) {
    const size_t i = idx / M;
    d_mem[idx] += cosine_memory_grad(d_wg[i], p.key[idx % M] / key_norm, t.cos[i], sh.mem[idx] / sh.mem_norm[i]);
  }
  __syncthreads();
}

// Eq 2 for H heads: r[h,m] = Σ_i w[h,i]·M[i,m], a warp per (h, m).
template <typename T>
__device__ void read_item(const T* mem, const T* w, int H, const Sizes& s, T* r) {
  const int lane = threadIdx.x & 31;
  for (int hm = threadIdx.x >> 5; hm < H * s.M; hm += kWarps) {
    const int h = hm / s.M, m = hm % s.M;
    T acc = 0;
    for (int i = lane; i < s.N; i += 32) acc += w[h * s.N + i] * mem[size_t(i) * s.M + m];
    acc = warp_sum(acc);
    if (lane == 0) r[hm] = acc;
  }
}

// Backward of read_item: d_w[h,i] += <dr[h], M[i]>; d_mem[i,m] += Σ_h w[h,i]·dr[h,m].
template <typename T>
__device__ void read_item_backward(const T* mem, const T* w, const T* d_r, int H, const Sizes& s, T* d_w,
                                   T* d_mem) {
  for (int hi = threadIdx.x; hi < H * s.N; hi += kThreads) {
    const int h = hi / s.N, i = hi % s.N;
    T acc = 0;
    for (int m = 0; m < s.M; ++m) acc += d_r[h * s.M + m] * mem[size_t(i) * s.M + m];
    d_w[hi] += acc;
  }
  for (size_t idx = threadIdx.x; idx < size_t(s.N) * s.M; idx += kThreads) {
    const int i = idx / s.M, m = idx % s.M;
    T acc = 0;
    for (int h = 0; h < H; ++h) acc += w[h * s.N + i] * d_r[h * s.M + m];
    d_mem[idx] += acc;
  }
}

// Π_{h ≠ skip} (1 - w[h,i]·e[h,m]) (skip = -1: every head).
template <typename T>
__device__ __forceinline__ T keep_product(const T* w, const T* erase, int W, const Sizes& s, int i, int m, int skip) {
  T keep = 1;
  for (int h = 0; h < W; ++h)
    if (h != skip) keep *= 1 - w[h * s.N + i] * erase[h * s.M + m];
  return keep;
}

// Eq 3-4 for W heads: M'[i] = M[i] ⊙ Π_h (1 - w[h,i]·e[h]) + Σ_h w[h,i]·a[h] (all erases, then all adds).
template <typename T>
__device__ void write_item(const T* mem, const T* w, const T* erase, const T* add, int W, const Sizes& s, T* out) {
  for (size_t idx = threadIdx.x; idx < size_t(s.N) * s.M; idx += kThreads) {
    const int i = idx / s.M, m = idx % s.M;
    T added = 0;
    for (int h = 0; h < W; ++h) added += w[h * s.N + i] * add[h * s.M + m];
    out[idx] = mem[idx] * keep_product(w, erase, W, s, i, m, -1) + added;
  }
}

// Backward of write_item for the upstream gradient G = dM': adds to d_mem and d_w, writes d_erase and d_add.
// The product over the other heads is formed directly (no division), so full erases stay exact.
template <typename T>
__device__ void write_item_backward(const T* mem, const T* w, const T* erase, const T* add, const T* G, int W,
                                    const Sizes& s, T* d_mem, T* d_w, T* d_erase, T* d_add) {
  const int N = s.N, M = s.M, lane = threadIdx.x & 31;
  for (size_t idx = threadIdx.x; idx < size_t(N) * M; idx += kThreads)
    d_mem[idx] += G[idx] * keep_product(w, erase, W, s, idx / M, idx % M, -1);
  for (int hi = threadIdx.x; hi < W * N; hi += kThreads) {  // d w[h,i] = Σ_m G·(a - e·M·Π_{other heads})
    const int h = hi / N, i = hi % N;
    T acc = 0;
    for (int m = 0; m < M; ++m) {
      const size_t idx = size_t(i) * M + m;
      acc += G[idx] * (add[h * M + m] - erase[h * M + m] * mem[idx] * keep_product(w, erase, W, s, i, m, h));
    }
    d_w[hi] += acc;
  }
  for (int hm = threadIdx.x >> 5; hm < W * M; hm += kWarps) {  // a warp per (h, m)
    const int h = hm / M, m = hm % M;
    T de = 0, da = 0;
    for (int i = lane; i < N; i += 32) {
      const size_t idx = size_t(i) * M + m;
      de -= w[h * N + i] * G[idx] * mem[idx] * keep_product(w, erase, W, s, i, m, h);
      da += w[h * N + i] * G[idx];
    }
    de = warp_sum(de);
    da = warp_sum(da);
    if (lane == 0) {
      d_erase[hm] = de;  // e's own value is not in its gradient (the product over the other heads is)
      d_add[hm] = da;
    }
  }
}

template <typename T>
__device__ void zero(T* p, size_t n) {
  for (size_t idx = threadIdx.x; idx < n; idx += kThreads) p[idx] = 0;
}

// ---- kernels: block b handles batch item b ----------------------------------------------------------------

template <typename T>
__global__ void __launch_bounds__(kThreads) address_forward_kernel(const T* memory, HeadParams<T> heads, T* w,
                                                                     Numerics<T> num, Sizes s, bool tile) {
  const int b = blockIdx.x, H = int(heads.H);
  const Shared<T> sh = load_item_with_norms(memory + size_t(b) * s.N * s.M, s, H, tile, num);
  for (int h = 0; h < H; ++h)
    address_head(sh, head_at(heads, b, h, s), s, num, sh.trace(w + (size_t(b) * H + h) * s.N));
}

template <typename T>
__global__ void __launch_bounds__(kThreads) address_backward_kernel(const T* memory, HeadParams<T> heads,
                                                                      const T* grad_w, T* d_memory, HeadGrads<T> d,
                                                                      Numerics<T> num, Sizes s, bool tile) {
  const int b = blockIdx.x, H = int(heads.H);
  const Shared<T> sh = load_item_with_norms(memory + size_t(b) * s.N * s.M, s, H, tile, num);
  T* d_mem = d_memory + size_t(b) * s.N * s.M;
  zero(d_mem, size_t(s.N) * s.M);
  __syncthreads();
  for (int h = 0; h < H; ++h) {
    const Head<T> head = head_at(heads, b, h, s);
    const Trace<T> t = sh.trace(sh.w);
    address_head(sh, head, s, num, t);
    address_head_backward(sh, head, s, num, t, grad_w + (size_t(b) * H + h) * s.N, grad_at(d, b, h, s), d_mem);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) read_forward_kernel(const T* memory, const T* w, int H, T* r, Sizes s,
                                                                  bool tile) {
  const int b = blockIdx.x;
  const Shared<T> sh = load_item(memory + size_t(b) * s.N * s.M, s, H, tile);
  read_item(sh.mem, w + size_t(b) * H * s.N, H, s, r + size_t(b) * H * s.M);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) read_backward_kernel(const T* memory, const T* w, int H, const T* grad_r,
                                                                   T* d_memory, T* d_w, Sizes s, bool tile) {
  const int b = blockIdx.x;
  const Shared<T> sh = load_item(memory + size_t(b) * s.N * s.M, s, H, tile);
  T* d_mem = d_memory + size_t(b) * s.N * s.M;
  T* d_wb = d_w + size_t(b) * H * s.N;
  zero(d_mem, size_t(s.N) * s.M);
  zero(d_wb, size_t(H) * s.N);
  __syncthreads();
  read_item_backward(sh.mem, w + size_t(b) * H * s.N, grad_r + size_t(b) * H * s.M, H, s, d_wb, d_mem);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) write_forward_kernel(const T* memory, const T* w, const T* erase,
                                                                   const T* add, int W, T* out, Sizes s, bool tile) {
  const int b = blockIdx.x;
  const Shared<T> sh = load_item(memory + size_t(b) * s.N * s.M, s, W, tile);
  write_item(sh.mem, w + size_t(b) * W * s.N, erase + size_t(b) * W * s.M, add + size_t(b) * W * s.M, W, s,
             out + size_t(b) * s.N * s.M);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) write_backward_kernel(const T* memory, const T* w, const T* erase,
                                                                    const T* add, int W, const T* grad_out,
                                                                    T* d_memory, T* d_w, T* d_erase, T* d_add, Sizes s,
                                                                    bool tile) {
  const int b = blockIdx.x;
  const size_t NM = size_t(s.N) * s.M;
  const Shared<T> sh = load_item(memory + b * NM, s, W, tile);
  zero(d_memory + b * NM, NM);
  zero(d_w + size_t(b) * W * s.N, size_t(W) * s.N);
  __syncthreads();
  write_item_backward(sh.mem, w + size_t(b) * W * s.N, erase + size_t(b) * W * s.M, add + size_t(b) * W * s.M,
                      grad_out + b * NM, W, s, d_memory + b * NM, d_w + size_t(b) * W * s.N,
                      d_erase + size_t(b) * W * s.M, d_add + size_t(b) * W * s.M);
}

// Every head addresses M_{t-1} (weightings kept in shared memory, read heads first); then the reads (Eq 2)
// and the write (Eq 3-4), both against M_{t-1}.
template <typename T>
__device__ Shared<T> address_all(const T* memory, const HeadParams<T>& rh, const HeadParams<T>& wh,
                                 const Numerics<T>& num, const Sizes& s, bool tile) {
  const int b = blockIdx.x, R = int(rh.H), W = int(wh.H);
  const Shared<T> sh = load_item_with_norms(memory + size_t(b) * s.N * s.M, s, R + W, tile, num);
  for (int h = 0; h < R; ++h) address_head(sh, head_at(rh, b, h, s), s, num, sh.trace(sh.w + h * s.N));
  for (int h = 0; h < W; ++h) address_head(sh, head_at(wh, b, h, s), s, num, sh.trace(sh.w + (R + h) * s.N));
  return sh;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) memory_step_forward_kernel(const T* memory, HeadParams<T> rh,
                                                                         HeadParams<T> wh, const T* erase, const T* add,
                                                                         T* reads, T* w_read, T* w_write, T* new_memory,
                                                                         Numerics<T> num, Sizes s, bool tile) {
  const int b = blockIdx.x, R = int(rh.H), W = int(wh.H);
  const Shared<T> sh = address_all(memory, rh, wh, num, s, tile);
  for (int idx = threadIdx.x; idx < (R + W) * s.N; idx += kThreads) {
    if (idx < R * s.N)
      w_read[size_t(b) * R * s.N + idx] = sh.w[idx];
    else
      w_write[size_t(b) * W * s.N + idx - R * s.N] = sh.w[idx];
  }
  read_item(sh.mem, sh.w, R, s, reads + size_t(b) * R * s.M);
  write_item(sh.mem, sh.w + R * s.N, erase + size_t(b) * W * s.M, add + size_t(b) * W * s.M, W, s,
             new_memory + size_t(b) * s.N * s.M);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) memory_step_backward_kernel(
    const T* memory, HeadParams<T> rh, HeadParams<T> wh, const T* erase, const T* add, const T* grad_reads,
    const T* grad_w_read, const T* grad_w_write, const T* grad_new_memory, T* d_memory, HeadGrads<T> d_rh,
    HeadGrads<T> d_wh, T* d_erase, T* d_add, Numerics<T> num, Sizes s, bool tile) {
  const int b = blockIdx.x, R = int(rh.H), W = int(wh.H);
  const size_t NM = size_t(s.N) * s.M;
  const Shared<T> sh = address_all(memory, rh, wh, num, s, tile);
  T* d_mem = d_memory + b * NM;
  zero(d_mem, NM);
  // d w = the upstream gradient + what the read and the write pass back.
  for (int idx = threadIdx.x; idx < (R + W) * s.N; idx += kThreads)
    sh.d_w[idx] = idx < R * s.N ? grad_w_read[size_t(b) * R * s.N + idx]
                                : grad_w_write[size_t(b) * W * s.N + idx - R * s.N];
  __syncthreads();
  read_item_backward(sh.mem, sh.w, grad_reads + size_t(b) * R * s.M, R, s, sh.d_w, d_mem);
  __syncthreads();
  write_item_backward(sh.mem, sh.w + R * s.N, erase + size_t(b) * W * s.M, add + size_t(b) * W * s.M,
                      grad_new_memory + b * NM, W, s, d_mem, sh.d_w + R * s.N, d_erase + size_t(b) * W * s.M,
                      d_add + size_t(b) * W * s.M);
  __syncthreads();
  // Each head's trace is recomputed (shared memory holds one) right before its backward.
  for (int h = 0; h < R + W; ++h) {
    const bool is_read = h < R;
    const Head<T> head = is_read ? head_at(rh, b, h, s) : head_at(wh, b, h - R, s);
    const Trace<T> t = sh.trace(sh.w + h * s.N);
    address_head(sh, head, s, num, t);
    address_head_backward(sh, head, s, num, t, sh.d_w + h * s.N,
                          is_read ? grad_at(d_rh, b, h, s) : grad_at(d_wh, b, h - R, s), d_mem);
  }
}

// Launch one block per batch item with the shared memory for H heads, plus the memory tile when it fits.
template <typename T, typename Kernel, typename... Args>
cudaError_t launch(Kernel kernel, const Sizes& s, int H, cudaStream_t stream, Args... args) {
  if (s.B == 0) return cudaSuccess;
  int device = 0, limit = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err != cudaSuccess) return err;
  const size_t base = shared_elems(s, H) * sizeof(T), tile_bytes = size_t(s.N) * s.M * sizeof(T);
  if (base > size_t(limit)) return cudaErrorInvalidConfiguration;  // too many slots for one block's N-vectors
  const bool tile = base + tile_bytes <= size_t(limit);
  const size_t bytes = base + (tile ? tile_bytes : 0);
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
  if (err != cudaSuccess) return err;
  kernel<<<s.B, kThreads, bytes, stream>>>(args..., s, tile);
  return cudaGetLastError();
}

}  // namespace

template <typename T>
cudaError_t address_forward(const T* memory, HeadParams<T> heads, T* w, Numerics<T> num, Sizes s,
                            cudaStream_t stream) {
  return launch<T>(address_forward_kernel<T>, s, int(heads.H), stream, memory, heads, w, num);
}

template <typename T>
cudaError_t address_backward(const T* memory, HeadParams<T> heads, const T* grad_w, T* d_memory, HeadGrads<T> d_heads,
                             Numerics<T> num, Sizes s, cudaStream_t stream) {
  return launch<T>(address_backward_kernel<T>, s, int(heads.H), stream, memory, heads, grad_w, d_memory, d_heads,
                   num);
}

template <typename T>
cudaError_t read_forward(const T* memory, const T* w, int H, T* r, Sizes s, cudaStream_t stream) {
  return launch<T>(read_forward_kernel<T>, s, H, stream, memory, w, H, r);
}

template <typename T>
cudaError_t read_backward(const T* memory, const T* w, int H, const T* grad_r, T* d_memory, T* d_w, Sizes s,
                          cudaStream_t stream) {
  return launch<T>(read_backward_kernel<T>, s, H, stream, memory, w, H, grad_r, d_memory, d_w);
}

template <typename T>
cudaError_t write_forward(const T* memory, const T* w, const T* erase, const T* add, int W, T* out, Sizes s,
                          cudaStream_t stream) {
  return launch<T>(write_forward_kernel<T>, s, W, stream, memory, w, erase, add, W, out);
}

template <typename T>
cudaError_t write_backward(const T* memory, const T* w, const T* erase, const T* add, int W, const T* grad_out,
                           T* d_memory, T* d_w, T* d_erase, T* d_add, Sizes s, cudaStream_t stream) {
  return launch<T>(write_backward_kernel<T>, s, W, stream, memory, w, erase, add, W, grad_out, d_memory, d_w,
                   d_erase, d_add);
}

template <typename T>
cudaError_t memory_step_forward(const T* memory, HeadParams<T> read_heads, HeadParams<T> write_heads, const T* erase,
                                const T* add, T* reads, T* w_read, T* w_write, T* new_memory, Numerics<T> num,
                                Sizes s, cudaStream_t stream) {
  return launch<T>(memory_step_forward_kernel<T>, s, int(read_heads.H + write_heads.H), stream, memory, read_heads,
                   write_heads, erase, add, reads, w_read, w_write, new_memory, num);
}

template <typename T>
cudaError_t memory_step_backward(const T* memory, HeadParams<T> read_heads, HeadParams<T> write_heads, const T* erase,
                                 const T* add, const T* grad_reads, const T* grad_w_read, const T* grad_w_write,
                                 const T* grad_new_memory, T* d_memory, HeadGrads<T> d_read_heads,
                                 HeadGrads<T> d_write_heads, T* d_erase, T* d_add, Numerics<T> num, Sizes s,
                                 cudaStream_t stream) {
  return launch<T>(memory_step_backward_kernel<T>, s, int(read_heads.H + write_heads.H), stream, memory, read_heads,
                   write_heads, erase, add, grad_reads, grad_w_read, grad_w_write, grad_new_memory, d_memory,
                   d_read_heads, d_write_heads, d_erase, d_add, num);
}

#define NTM_INSTANTIATE(T)                                                                                         \
  template cudaError_t address_forward<T>(const T*, HeadParams<T>, T*, Numerics<T>, Sizes, cudaStream_t);        \
  template cudaError_t address_backward<T>(const T*, HeadParams<T>, const T*, T*, HeadGrads<T>, Numerics<T>, Sizes, \
                                          cudaStream_t);                                                           \
  template cudaError_t read_forward<T>(const T*, const T*, int, T*, Sizes, cudaStream_t);                          \
  template cudaError_t read_backward<T>(const T*, const T*, int, const T*, T*, T*, Sizes, cudaStream_t);           \
  template cudaError_t write_forward<T>(const T*, const T*, const T*, const T*, int, T*, Sizes, cudaStream_t);     \
  template cudaError_t write_backward<T>(const T*, const T*, const T*, const T*, int, const T*, T*, T*, T*, T*,    \
                                         Sizes, cudaStream_t);                                                     \
  template cudaError_t memory_step_forward<T>(const T*, HeadParams<T>, HeadParams<T>, const T*, const T*, T*, T*, \
                                              T*, T*, Numerics<T>, Sizes, cudaStream_t);                           \
  template cudaError_t memory_step_backward<T>(const T*, HeadParams<T>, HeadParams<T>, const T*, const T*,         \
                                               const T*, const T*, const T*, const T*, T*, HeadGrads<T>,           \
                                               HeadGrads<T>, T*, T*, Numerics<T>, Sizes, cudaStream_t);

NTM_INSTANTIATE(float)
NTM_INSTANTIATE(double)

}  // namespace cuda_kernels
}  // namespace ntm
