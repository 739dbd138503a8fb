// The per-element NTM addressing math (Eq 5-9, forward and backward) and the per-head structs, written once for
// the CPU kernels (ntm_cpu.cpp) and the CUDA kernels (ntm_cuda_kernels.cu): inline functions that compile as
// host code and, under nvcc, as device code too. Loops, reductions, layouts and the exp/log are each kernel's
// own; what one element of a weighting, a similarity or a gradient is, is here. No torch headers.
//
// Equation numbers are those of Graves, Wayne & Danihelka (2014), arXiv:1410.5401; the conventions (smoothed
// cosine, sharpening as softmax(γ·log max(w_s, floor))) are ntm_fast/reference.py's, and its two constants
// arrive as arguments (Numerics) rather than being copied here.
#pragma once

#include <math.h>

#include <cstdint>

#ifdef __CUDACC__
#define NTM_HD __host__ __device__ __forceinline__
#else
#define NTM_HD inline __attribute__((always_inline))
#endif

namespace ntm {

// reference.COSINE_EPS (the ε of Eq 6's smoothed norms) and reference.sharpen_floor(dtype) (where w_s is
// floored before Eq 9's log: torch.finfo(dtype).tiny), as the caller passes them.
template <typename T>
struct Numerics {
  T cosine_eps, sharpen_floor;
};

template <typename T>
inline Numerics<T> numerics(double cosine_eps, double sharpen_floor) {
  return {static_cast<T>(cosine_eps), static_cast<T>(sharpen_floor)};
}

// The [B, H, ...] parameters of H heads, or their gradients (P = const T* or T*): key [B,H,M],
// beta/gate/gamma [B,H], shift [B,H,K], w_prev [B,H,N].
template <typename P>
struct Heads {
  P key, beta, gate, shift, gamma, w_prev;
  int64_t H;
};

template <typename T>
using HeadParams = Heads<const T*>;
template <typename T>
using HeadGrads = Heads<T*>;

// One head's parameters for one batch item.
template <typename T>
struct Head {
  const T* key;  // [M]
  T beta, gate;
  const T* shift;  // [K]
  T gamma;
  const T* w_prev;  // [N]
};

// Where one head's parameter gradients go, for one batch item.
template <typename T>
struct HeadGrad {
  T* key;  // [M]
  T* beta;
  T* gate;
  T* shift;  // [K]
  T* gamma;
  T* w_prev;  // [N]
};

// One head's addressing intermediates ([N] each), kept or recomputed for its backward.
template <typename T>
struct Trace {
  T *cos, *w_c, *w_g, *w_s, *log_w_s, *w;
};

// Head h of batch item b (S: any sizes struct with N, M, K).
template <typename T, typename S>
NTM_HD Head<T> head_at(const HeadParams<T>& p, int64_t b, int64_t h, const S& s) {
  const int64_t r = b * p.H + h;
  return {p.key + r * s.M, p.beta[r], p.gate[r], p.shift + r * s.K, p.gamma[r], p.w_prev + r * s.N};
}

template <typename T, typename S>
NTM_HD HeadGrad<T> grad_at(const HeadGrads<T>& d, int64_t b, int64_t h, const S& s) {
  const int64_t r = b * d.H + h;
  return {d.key + r * s.M, d.beta + r, d.gate + r, d.shift + r * s.K, d.gamma + r, d.w_prev + r * s.N};
}

NTM_HD float sqrt_of(float x) { return sqrtf(x); }
NTM_HD double sqrt_of(double x) { return sqrt(x); }

// ---- forward --------------------------------------------------------------------------------------------

// Eq 6's smoothed norm sqrt(Σ x² + ε), from the sum of squares.
template <typename T>
NTM_HD T smoothed_norm(T sum_sq, const Numerics<T>& c) {
  return sqrt_of(sum_sq + c.cosine_eps);
}

// Eq 6: K[i] = k·M[i] / (‖k‖·‖M[i]‖), both norms smoothed.
template <typename T>
NTM_HD T cosine(T dot, T key_norm, T mem_norm) {
  return dot / (key_norm * mem_norm);
}

// Eq 7: w_g = g·w_c + (1 - g)·w_prev.
template <typename T>
NTM_HD T interpolate(T gate, T w_c, T w_prev) {
  return gate * w_c + (1 - gate) * w_prev;
}

// Eq 8: w_s[i] = Σ_j s[j+S]·w_g[(i - j) mod N] for j = jj - S. The offset o = j mod N, so that slot i reads
// w_g[i - o] for i ≥ o and w_g[i - o + N] below: two contiguous runs.
// (I: the kernel's index type.)
template <typename I>
NTM_HD I shift_offset(I jj, I K, I N) {
  const I j = jj - (K - 1) / 2;
  return ((j % N) + N) % N;
}

template <typename I>
NTM_HD I shift_source(I i, I o, I N) {
  return i >= o ? i - o : i - o + N;
}

// Eq 9 is softmax(γ·log max(w_s, floor)): the argument of that log. A NaN passes (as torch.clamp_min's does).
template <typename T>
NTM_HD T sharpen_input(T w_s, const Numerics<T>& c) {
  return w_s < c.sharpen_floor ? c.sharpen_floor : w_s;
}

// ---- backward -------------------------------------------------------------------------------------------

// y = softmax(z): dz[i] = y[i]·(dy[i] - <y, dy>).
template <typename T>
NTM_HD T softmax_grad(T y, T dy, T y_dot_dy) {
  return y * (dy - y_dot_dy);
}

// Eq 9 backward from du, the gradient of u = γ·log max(w_s, floor): dw_s = γ·du / w_s where w_s was not
// floored; the floor passes no gradient (nor does a NaN w_s, as in torch.clamp_min's backward).
template <typename T>
NTM_HD T sharpen_input_grad(T w_s, T gamma, T du, const Numerics<T>& c) {
  return w_s >= c.sharpen_floor ? gamma * du / w_s : T(0);
}

// Eq 7 backward: d g gets dw_g·(w_c - w_prev), d w_prev = (1 - g)·dw_g, d w_c = g·dw_g.
template <typename T>
NTM_HD T interpolate_gate_grad(T d_wg, T w_c, T w_prev) {
  return d_wg * (w_c - w_prev);
}

template <typename T>
NTM_HD T interpolate_prev_grad(T gate, T d_wg) {
  return (1 - gate) * d_wg;
}

// Eq 6 backward, with K = k̂·M̂[i] (k̂ = k/‖k‖, M̂[i] = M[i]/‖M[i]‖, smoothed norms) and dK[i] the similarity's
// gradient: dM[i,m] = dK[i]/‖M[i]‖·(k̂[m] - K[i]·M̂[i,m]) and dk[m] = Σ_i dK[i]/‖k‖·(M̂[i,m] - K[i]·k̂[m]). Each
// is the part of one unit vector orthogonal to the other, formed per element: a row (anti)parallel to the key
// (|K| = 1) gives exactly 0, as the reference does, not a difference of two rounded terms.
// coef = dK[i]/‖M[i]‖; the key's term is summed over i, then divided by ‖k‖.
template <typename T>
NTM_HD T cosine_memory_grad(T coef, T key_unit, T K, T mem_unit) {
  return coef * (key_unit - K * mem_unit);
}

template <typename T>
NTM_HD T cosine_key_grad_term(T dK, T mem_unit, T K, T key_unit) {
  return dK * (mem_unit - K * key_unit);
}

// ---- write (Eq 3-4) -------------------------------------------------------------------------------------

}  // namespace ntm
