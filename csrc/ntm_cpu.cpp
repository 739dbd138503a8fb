// Fused CPU kernels of the NTM memory ops (address, read, write, memory_step), forward and backward.
//
// The per-element math (Eq 5-9 and its backward, equation numbers of Graves, Wayne & Danihelka 2014,
// arXiv:1410.5401) is ntm_math.h's, shared with the CUDA kernels; the vector-lane reductions, the transpose and
// the exp/log are fast_math.h's. ε and the sharpening floor come from the caller (ntm_fast/reference.py).
//
// Layout: batch items run in parallel (at::parallel_for) and each item's whole op is one pass over its
// memory, which (N×M, 10 KB at 128×20 floats) stays in L1 meanwhile. The kernels work on Mᵀ [M, N], so that
// the similarities, reads, writes and their gradients are loops over the N slots with unit stride
// (vectorized) rather than reductions over a short slot width M. memory_step returns its new memory
// slot-minor (a [B, N, M] view of [B, M, N] storage, strides [N·M, 1, N]) and takes memory in either
// layout, so in a recurrence only the first step transposes; the other ops transpose row-major memory into
// the workspace and back. Backward recomputes the addressing intermediates (K, w_c, w_g, w_s) from the saved
// inputs and builds the memory gradient in the memory's own layout.
// Passes over an item's memory in memory_step: forward, one for the row norms and every head's dot products
// (address_item), then the read and the write; backward, the same first pass (plus the read's d w), the
// write's backward, and one last pass for every other memory and key gradient (address_item_backward).
#include "fast_math.h"
#include "ntm.h"
#include "ntm_math.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace ntm {
namespace {

constexpr int64_t kGrain = 4;  // fewest batch items worth a parallel task

struct Sizes {
  int64_t N, M, K;  // slots, slot width, shift offsets 2S+1
};

// Where each buffer of a Workspace starts in its one allocation, in elements: three [M, N] matrices, then
// [N] vectors, each buffer right after the one before.
struct WorkspaceLayout {
  static constexpr int64_t kScratch = 4;      // [N] scratch vectors
  static constexpr int64_t kTraceVectors = 5;  // a Trace's own [N] vectors (its w is in w())
  int64_t N, MN, H;
  int64_t mem_t() const { return 0; }
  int64_t grad_t() const { return mem_t() + MN; }
  int64_t d_mem_t() const { return grad_t() + MN; }
  int64_t mem_norm() const { return d_mem_t() + MN; }
  int64_t scratch(int64_t i) const { return mem_norm() + N + i * N; }
  int64_t inv_norm() const { return scratch(kScratch); }
  int64_t w() const { return inv_norm() + N; }
  int64_t d_w() const { return w() + H * N; }
  int64_t trace(int64_t h) const { return d_w() + H * N + h * kTraceVectors * N; }
  int64_t d_cos() const { return trace(H); }
  int64_t coef() const { return d_cos() + H * N; }
  int64_t size() const { return coef() + H * N; }
};

// Per-thread scratch for one batch item at a time: the transposed memory, upstream gradient and memory
// gradient ([M, N] each), row norms, the traces and weighting gradients of H heads, what their backward hands
// to the last pass over the memory (address_item_backward), [N] buffers; the item's heads.
template <typename T>
class Workspace {
 public:
  Workspace(const Sizes s, int64_t H, int64_t R = 0)
      : at_{s.N, s.M * s.N, H}, buf_(at_.size()), heads(H), d_heads(H), sum_keys(1 + H + R), sum_outs(1 + H + R),
        key_norm(H), key_unit(H * s.M), read_grad(R) {}
  T* mem_t() { return buf_.data() + at_.mem_t(); }      // Mᵀ
  T* grad_t() { return buf_.data() + at_.grad_t(); }    // (dM')ᵀ, the upstream memory gradient
  T* d_mem_t() { return buf_.data() + at_.d_mem_t(); }  // (dM)ᵀ
  T* mem_norm() { return buf_.data() + at_.mem_norm(); }
  T* scratch(int i) { return buf_.data() + at_.scratch(i); }  // i < WorkspaceLayout::kScratch
  T* inv_norm() { return buf_.data() + at_.inv_norm(); }      // 1 / ‖M[i]‖
  T* w() { return buf_.data() + at_.w(); }                    // [H, N]: every head's weighting
  T* d_w() { return buf_.data() + at_.d_w(); }                // [H, N]: their gradients
  Trace<T> trace(int64_t h) {
    T* t = buf_.data() + at_.trace(h);
    const int64_t N = at_.N;
    return {t, t + N, t + 2 * N, t + 3 * N, t + 4 * N, w() + h * N};
  }
  T* d_cos() { return buf_.data() + at_.d_cos(); }  // [H, N]: d K[i] of every head
  T* coef() { return buf_.data() + at_.coef(); }    // [H, N]: d K[i] / ‖M[i]‖ of every head

 private:
  WorkspaceLayout at_;
  std::vector<T> buf_;

 public:
  std::vector<Head<T>> heads;        // [H]: one item's heads, read heads first
  std::vector<HeadGrad<T>> d_heads;  // [H]: where their gradients go
  // The vectors of address_item's pass over the memory (norms, H keys, R read gradients) and its outputs.
  std::vector<const T*> sum_keys;
  std::vector<T*> sum_outs;
  std::vector<T> key_norm;   // [H]: ‖k‖ of every head
  std::vector<T> key_unit;   // [M, H]: k/‖k‖ of every head
  std::vector<T> read_grad;  // [R]: dr[m] of every read head, one column m at a time
};

// outs[j][i] = Σ_m a_j(m)·Mᵀ[m,i] over the M columns, for every slot i and kJ vectors a_j at once (one
// pass over the memory): with keys[j] = k, a_j(m) = k[m] (the dot products k·M[i]); with keys[j] = null,
// a_j(m) = Mᵀ[m,i] (the squared row norms). A block of kBlock slots keeps its kJ sums in registers over the
// whole column loop (independent FMA chains) rather than reloading and storing them once per column; the
// order of summation per slot is m = 0..M-1.
template <typename T, int kJ>
void column_sums_of(const T* __restrict mem_t, const T* const* keys, const Sizes s, T* const* outs) {
  constexpr int64_t kBlock = 256 / sizeof(T);  // 4 cache lines: 64 floats or 32 doubles
  const int64_t N = s.N, M = s.M;
  auto block = [&](int64_t i0, auto width) {
    constexpr int64_t kW = decltype(width)::value;
    T acc[kJ][kW] = {};
    for (int64_t m = 0; m < M; ++m) {
      const T* __restrict col = mem_t + m * N + i0;
      for (int j = 0; j < kJ; ++j) {
        const T* __restrict key = keys[j];
#pragma omp simd
        for (int64_t ii = 0; ii < kW; ++ii) acc[j][ii] += (key ? key[m] : col[ii]) * col[ii];
      }
    }
    for (int j = 0; j < kJ; ++j)
      for (int64_t ii = 0; ii < kW; ++ii) outs[j][i0 + ii] = acc[j][ii];
  };
  int64_t i0 = 0;
  for (; i0 + kBlock <= N; i0 += kBlock) block(i0, std::integral_constant<int64_t, kBlock>());
  for (; i0 + 16 <= N; i0 += 16) block(i0, std::integral_constant<int64_t, 16>());
  for (; i0 < N; ++i0) block(i0, std::integral_constant<int64_t, 1>());
}

// The same for any number J of vectors, up to four per pass (their sums fill 16 of the 32 vector registers).
template <typename T>
void column_sums(const T* __restrict mem_t, const T* const* keys, int64_t J, const Sizes s, T* const* outs) {
  for (int64_t j = 0; j < J; j += 4) {
    switch (std::min<int64_t>(J - j, 4)) {
      case 1: column_sums_of<T, 1>(mem_t, keys + j, s, outs + j); break;
      case 2: column_sums_of<T, 2>(mem_t, keys + j, s, outs + j); break;
      case 3: column_sums_of<T, 3>(mem_t, keys + j, s, outs + j); break;
      default: column_sums_of<T, 4>(mem_t, keys + j, s, outs + j); break;
    }
  }
}

// ‖M[i]‖ smoothed as in Eq 6, sqrt(Σ_m M[i,m]² + ε), and its inverse, from the squared norms in `norm`.
template <typename T>
void finish_row_norms(const Sizes s, const Numerics<T> num, T* __restrict norm, T* __restrict inv_norm) {
  for (int64_t i = 0; i < s.N; ++i) {
    norm[i] = smoothed_norm(norm[i], num);
    inv_norm[i] = T(1) / norm[i];
  }
}

template <typename T>
T key_norm_of(const T* __restrict key, const Sizes s, const Numerics<T> num) {
  T kk = 0;
  for (int64_t m = 0; m < s.M; ++m) kk += key[m] * key[m];
  return smoothed_norm(kk, num);
}

// y = softmax(scale · x) over n entries. The products are stored before the max is subtracted, so that each
// is rounded once, as the reference's: contracted into an FMA, scale·x[i] - max is the product's rounding
// error where it should be 0, e^error for β or γ ~ 1e10 and more, and the sum overflows (NaN weights).
template <typename T>
void scaled_softmax(const T* __restrict x, T scale, T* __restrict y, int64_t n) {
  const T mx = max_over<T>(n, [&](int64_t i) { return y[i] = scale * x[i]; });
  const T sum = sum_over<T>(n, [&](int64_t i) { return y[i] = FastMath<T>::exp(y[i] - mx); });
  const T inv = T(1) / sum;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] *= inv;
}

// Eq 5-9 for one head, given the dot products k·M[i] in t.cos and the memory's row norms: fills the trace
// (w last).
template <typename T>
void address_head(const T* __restrict mem_norm, const Head<T> p, const Sizes s, const Numerics<T> num,
                  const Trace<T> t) {
  const int64_t N = s.N;
  // Eq 6: K[i] = k·M[i] / (sqrt(‖k‖² + ε) · sqrt(‖M[i]‖² + ε)).
  const T key_norm = key_norm_of(p.key, s, num);
  for (int64_t i = 0; i < N; ++i) t.cos[i] = cosine(t.cos[i], key_norm, mem_norm[i]);
  // Eq 5: w_c = softmax(β·K).
  scaled_softmax(t.cos, p.beta, t.w_c, N);
  // Eq 7: w_g = g·w_c + (1 - g)·w_prev.
  for (int64_t i = 0; i < N; ++i) t.w_g[i] = interpolate(p.gate, t.w_c[i], p.w_prev[i]);
  // Eq 8: w_s[i] = Σ_j s[j+S]·w_g[(i - j) mod N], in the two contiguous runs of shift_offset.
  std::fill(t.w_s, t.w_s + N, T(0));
  for (int64_t jj = 0; jj < s.K; ++jj) {
    const int64_t o = shift_offset(jj, s.K, N);
    const T sj = p.shift[jj];
    for (int64_t i = o; i < N; ++i) t.w_s[i] += sj * t.w_g[i - o];
    for (int64_t i = 0; i < o; ++i) t.w_s[i] += sj * t.w_g[i - o + N];
  }
  // Eq 9: w = w_s^γ / Σ w_s^γ, as softmax(γ·log max(w_s, floor)).
#pragma omp simd
  for (int64_t i = 0; i < N; ++i) t.log_w_s[i] = FastMath<T>::log(sharpen_input(t.w_s[i], num));
  scaled_softmax(t.log_w_s, p.gamma, t.w, N);
}

// Backward of address_head for upstream gradient d_w [N], down to the cosine similarities: writes the
// head's gradients except the key's, d K[i] to d_cos and d K[i]/‖M[i]‖ to coef. What reaches the memory and
// the key (Eq 6's products with M) is formed for all heads at once by address_item_backward. d_ws and d_wg
// are [N] scratch.
template <typename T>
void address_head_backward(const T* __restrict inv_norm, const Head<T> p, const Sizes s, const Numerics<T> num,
                           const Trace<T> t, const T* __restrict d_w, const HeadGrad<T> d, T* __restrict d_cos,
                           T* __restrict coef, T* __restrict d_ws, T* __restrict d_wg) {
  const int64_t N = s.N;
  // Eq 9: u = γ·log max(w_s, floor), w = softmax(u); du = w ⊙ (dw - <w, dw>).
  const T w_dw = sum_over<T>(N, [&](int64_t i) { return t.w[i] * d_w[i]; });
  *d.gamma = sum_over<T>(N, [&](int64_t i) {
    const T du = softmax_grad(t.w[i], d_w[i], w_dw);
    d_ws[i] = sharpen_input_grad(t.w_s[i], p.gamma, du, num);
    return du * t.log_w_s[i];
  });
  // Eq 8: d s[j+S] = Σ_i dw_s[i]·w_g[(i-j) mod N];  d w_g[n] = Σ_j s[j+S]·dw_s[(n+j) mod N].
  std::fill(d_wg, d_wg + N, T(0));
  for (int64_t jj = 0; jj < s.K; ++jj) {
    const int64_t o = shift_offset(jj, s.K, N);
    const T sj = p.shift[jj];
    d.shift[jj] = sum_over<T>(N - o, [&](int64_t i) { return d_ws[i + o] * t.w_g[i]; }) +
                  sum_over<T>(o, [&](int64_t i) { return d_ws[i] * t.w_g[i - o + N]; });
    for (int64_t n = 0; n < N - o; ++n) d_wg[n] += sj * d_ws[n + o];
    for (int64_t n = N - o; n < N; ++n) d_wg[n] += sj * d_ws[n + o - N];
  }
  // Eq 7: d g = Σ dw_g ⊙ (w_c - w_prev); d w_prev = (1 - g)·dw_g; d w_c = g·dw_g (kept in d_wg).
  *d.gate = sum_over<T>(N, [&](int64_t i) {
    const T dg = interpolate_gate_grad(d_wg[i], t.w_c[i], p.w_prev[i]);
    d.w_prev[i] = interpolate_prev_grad(p.gate, d_wg[i]);
    d_wg[i] *= p.gate;
    return dg;
  });
  // Eq 5: z = β·K, w_c = softmax(z); dz = w_c ⊙ (dw_c - <w_c, dw_c>); dβ = <dz, K>; dK = β·dz.
  const T wc_dwc = sum_over<T>(N, [&](int64_t i) { return t.w_c[i] * d_wg[i]; });
  *d.beta = sum_over<T>(N, [&](int64_t i) {
    const T dz = softmax_grad(t.w_c[i], d_wg[i], wc_dwc);
    d_cos[i] = p.beta * dz;
    return dz * t.cos[i];
  });
#pragma omp simd
  for (int64_t i = 0; i < N; ++i) coef[i] = d_cos[i] * inv_norm[i];
}

// Eq 5-9 for the heads in ws.heads against one item's memory Mᵀ: one pass over the memory for the row norms,
// every head's dot products and the column sums Σ_m extra_keys[e][m]·Mᵀ[m,i] into extra_outs[e] (the read
// backward's d w, Eq 2), then each head's addressing into its trace (ws.w() holds the weightings).
template <typename T>
void address_item(const T* mem_t, const Sizes s, const Numerics<T> num, Workspace<T>& ws, int64_t extra = 0,
                  const T* const* extra_keys = nullptr, T* const* extra_outs = nullptr) {
  const int64_t H = ws.heads.size();
  ws.sum_keys[0] = nullptr, ws.sum_outs[0] = ws.mem_norm();
  for (int64_t h = 0; h < H; ++h) ws.sum_keys[1 + h] = ws.heads[h].key, ws.sum_outs[1 + h] = ws.trace(h).cos;
  for (int64_t e = 0; e < extra; ++e) ws.sum_keys[1 + H + e] = extra_keys[e], ws.sum_outs[1 + H + e] = extra_outs[e];
  column_sums(mem_t, ws.sum_keys.data(), 1 + H + extra, s, ws.sum_outs.data());
  finish_row_norms(s, num, ws.mem_norm(), ws.inv_norm());
  for (int64_t h = 0; h < H; ++h) address_head(ws.mem_norm(), ws.heads[h], s, num, ws.trace(h));
}

// One column m of address_item_backward's last pass, for kH heads (pointers to their [N] vectors: c = dK/‖M‖,
// dK, K; ku = k̂[m] of each) and `reads` read terms (their weightings w_read [reads, N] and dr[m] of each,
// dr_m): updates d_col in one load and store per slot and returns the heads' key-gradient sums in dk. The
// accumulators are local so that they stay in registers.
template <typename T, int kH>
void orthogonal_terms(const T* __restrict col, const T* __restrict mem_norm, int64_t N, const T* const* c,
                      const T* const* dK, const T* const* K, const T* ku, int64_t reads, const T* __restrict w_read,
                      const T* dr_m, T* __restrict d_col, T* dk) {
  constexpr int L = kLanes<T>;
  T acc[kH][L] = {};
  auto block = [&](int64_t i0, auto width) {  // slots i0 .. i0+width, slot i0+ii in lane ii
    constexpr int64_t kW = decltype(width)::value;
    T unit[kW], d[kW];
#pragma omp simd
    for (int64_t ii = 0; ii < kW; ++ii) unit[ii] = col[i0 + ii] / mem_norm[i0 + ii], d[ii] = d_col[i0 + ii];
    for (int64_t r = 0; r < reads; ++r) {
      const T dr = dr_m[r];
      const T* __restrict w = w_read + r * N + i0;
#pragma omp simd
      for (int64_t ii = 0; ii < kW; ++ii) d[ii] += w[ii] * dr;
    }
    for (int h = 0; h < kH; ++h) {
      const T *__restrict ch = c[h] + i0, *__restrict dKh = dK[h] + i0, *__restrict Kh = K[h] + i0;
#pragma omp simd
      for (int64_t ii = 0; ii < kW; ++ii) {
        d[ii] += cosine_memory_grad(ch[ii], ku[h], Kh[ii], unit[ii]);
        acc[h][ii] += cosine_key_grad_term(dKh[ii], unit[ii], Kh[ii], ku[h]);
      }
    }
#pragma omp simd
    for (int64_t ii = 0; ii < kW; ++ii) d_col[i0 + ii] = d[ii];
  };
  int64_t i0 = 0;
  for (; i0 + L <= N; i0 += L) block(i0, std::integral_constant<int64_t, L>());
  for (; i0 < N; ++i0) block(i0, std::integral_constant<int64_t, 1>());
  for (int h = 0; h < kH; ++h) dk[h] = lane_total(acc[h], plus<T>);
}

// Backward of the heads' addressing (after address_item) for upstream gradients d_w [H, N], into
// ws.d_heads, adding to the memory gradient dMᵀ; `reads` of the read heads' weightings (ws.w()'s first rows)
// with gradients d_r [reads, M] add their Eq 2 term dMᵀ[m,i] += w_r[i]·dr[m] in the same pass.
// The head-wise work is over the slots; then one last pass over the memory for everything that reaches it or
// the keys (Eq 6's backward, cosine_memory_grad and cosine_key_grad_term in ntm_math.h; Eq 2):
//   dMᵀ[m,i] += Σ_h dK_h[i]/‖M[i]‖ · (k̂_h[m] - K_h[i]·M̂[i,m]) + Σ_r w_r[i]·dr_r[m]
//   dk_h[m]   = Σ_i dK_h[i]/‖k_h‖ · (M̂[i,m] - K_h[i]·k̂_h[m]).
// M̂ is formed once per element for all heads, in registers, and the key gradients' sums stay in vector lanes.
template <typename T>
void address_item_backward(const T* __restrict mem_t, const Sizes s, const Numerics<T> num, Workspace<T>& ws,
                           const T* d_w, int64_t reads, const T* d_r, T* __restrict d_mem_t) {
  const int64_t N = s.N, M = s.M, H = ws.heads.size();
  T* __restrict coef = ws.coef();
  T *__restrict key_norm = ws.key_norm.data(), *__restrict key_unit = ws.key_unit.data();
  for (int64_t h = 0; h < H; ++h) {
    address_head_backward(ws.inv_norm(), ws.heads[h], s, num, ws.trace(h), d_w + h * N, ws.d_heads[h],
                          ws.d_cos() + h * N, coef + h * N, ws.scratch(0), ws.scratch(1));
    key_norm[h] = key_norm_of(ws.heads[h].key, s, num);
    for (int64_t m = 0; m < M; ++m) key_unit[m * H + h] = ws.heads[h].key[m] / key_norm[h];
  }
  const T* c[4];
  const T* dK[4];
  const T* K[4];
  T dk[4];
  T* dr = ws.read_grad.data();
  for (int64_t m = 0; m < M; ++m) {
    const T* __restrict col = mem_t + m * N;
    T* __restrict d_col = d_mem_t + m * N;
    for (int64_t h0 = 0; h0 < H; h0 += 4) {  // heads in groups of up to four (H ≥ 1)
      const int64_t kH = std::min<int64_t>(H - h0, 4);
      for (int64_t h = 0; h < kH; ++h) {
        c[h] = coef + (h0 + h) * N, dK[h] = ws.d_cos() + (h0 + h) * N, K[h] = ws.trace(h0 + h).cos;
      }
      const int64_t nr = h0 == 0 ? reads : 0;  // the read terms ride along with the first group
      for (int64_t r = 0; r < nr; ++r) dr[r] = d_r[r * M + m];
      const T* ku = key_unit + m * H + h0;
      switch (kH) {
        case 1: orthogonal_terms<T, 1>(col, ws.mem_norm(), N, c, dK, K, ku, nr, ws.w(), dr, d_col, dk); break;
        case 2: orthogonal_terms<T, 2>(col, ws.mem_norm(), N, c, dK, K, ku, nr, ws.w(), dr, d_col, dk); break;
        case 3: orthogonal_terms<T, 3>(col, ws.mem_norm(), N, c, dK, K, ku, nr, ws.w(), dr, d_col, dk); break;
        default: orthogonal_terms<T, 4>(col, ws.mem_norm(), N, c, dK, K, ku, nr, ws.w(), dr, d_col, dk); break;
      }
      for (int64_t h = 0; h < kH; ++h) ws.d_heads[h0 + h].key[m] = dk[h] / key_norm[h0 + h];
    }
  }
}

// Eq 2 for H heads: r[h] = Σ_i w[h,i]·M[i].
template <typename T>
void read_item(const T* __restrict mem_t, const T* __restrict w, int64_t H, const Sizes s, T* __restrict r) {
  for (int64_t h = 0; h < H; ++h)
    for (int64_t m = 0; m < s.M; ++m) {
      const T* __restrict col = mem_t + m * s.N;
      r[h * s.M + m] = sum_over<T>(s.N, [&](int64_t i) { return w[h * s.N + i] * col[i]; });
    }
}

// Backward of read_item: d_w[h,i] += <dr[h], M[i]>; dMᵀ[m,i] += Σ_h w[h,i]·dr[h,m].
template <typename T>
void read_item_backward(const T* __restrict mem_t, const T* __restrict w, const T* __restrict d_r, int64_t H,
                        const Sizes s, T* __restrict d_w, T* __restrict d_mem_t) {
  for (int64_t h = 0; h < H; ++h)
    for (int64_t m = 0; m < s.M; ++m) {
      const T dr = d_r[h * s.M + m];
      const T* __restrict col = mem_t + m * s.N;
      T* __restrict d_col = d_mem_t + m * s.N;
      for (int64_t i = 0; i < s.N; ++i) {
        d_w[h * s.N + i] += dr * col[i];
        d_col[i] += dr * w[h * s.N + i];
      }
    }
}

// The standalone read op on row-major memory [N, M] (memory_step reads from Mᵀ instead): r[h] = Σ_i w[h,i]·M[i]
// as M-wide row updates, so that the op streams the memory once, without a transpose.
template <typename T>
void read_rows(const T* __restrict mem, const T* __restrict w, int64_t H, const Sizes s, T* __restrict r) {
  const int64_t N = s.N, M = s.M;
  for (int64_t h = 0; h < H; ++h) {
    T* __restrict rh = r + h * M;
    std::fill(rh, rh + M, T(0));
    for (int64_t i = 0; i < N; ++i) {
      const T wi = w[h * N + i];
      const T* __restrict row = mem + i * M;
#pragma omp simd
      for (int64_t m = 0; m < M; ++m) rh[m] += wi * row[m];
    }
  }
}

// Eq 3-4 for W heads on Mᵀ: M'ᵀ[m,i] = Mᵀ[m,i]·Π_h (1 - w[h,i]·e[h,m]) + Σ_h w[h,i]·a[h,m] (all erases,
// then all adds), one unit-stride pass over the slots per column m.
template <typename T>
void write_item(const T* __restrict mem_t, const T* __restrict w, const T* __restrict erase, const T* __restrict add,
                int64_t W, const Sizes s, T* __restrict out_t) {
  const int64_t N = s.N, M = s.M;
  for (int64_t m = 0; m < M; ++m) {
    const T* __restrict col = mem_t + m * N;
    T* __restrict o = out_t + m * N;
    if (W == 1) {  // the common case in one pass
      const T e = erase[m], a = add[m];
#pragma omp simd
      for (int64_t i = 0; i < N; ++i) o[i] = (1 - w[i] * e) * col[i] + w[i] * a;
      continue;
    }
    std::fill(o, o + N, T(1));
    for (int64_t h = 0; h < W; ++h) {
      const T e = erase[h * M + m];
      const T* __restrict wh = w + h * N;
#pragma omp simd
      for (int64_t i = 0; i < N; ++i) o[i] *= 1 - wh[i] * e;
    }
#pragma omp simd
    for (int64_t i = 0; i < N; ++i) o[i] *= col[i];
    for (int64_t h = 0; h < W; ++h) {
      const T a = add[h * M + m];
      const T* __restrict wh = w + h * N;
#pragma omp simd
      for (int64_t i = 0; i < N; ++i) o[i] += wh[i] * a;
    }
  }
}

// keep[i] = Π_{h ≠ skip} (1 - w[h,i]·e[h,m]) over the slots, for one column m (skip = -1: every head).
template <typename T>
void keep_product(const T* __restrict w, const T* __restrict erase, int64_t W, const Sizes s, int64_t m,
                  int64_t skip, T* __restrict keep) {
  std::fill(keep, keep + s.N, T(1));
  for (int64_t h = 0; h < W; ++h) {
    if (h == skip) continue;
    const T e = erase[h * s.M + m];
    for (int64_t i = 0; i < s.N; ++i) keep[i] *= 1 - w[h * s.N + i] * e;
  }
}

// Backward of write_item for the upstream gradient G = dM' (given as Gᵀ): writes dMᵀ (the first gradient
// of M that a backward pass forms, so no zeroing pass is needed), adds to d_w, writes d_erase and d_add. The
// product over the other heads is formed directly (no division), so full erases (w·e = 1) stay exact.
template <typename T>
void write_item_backward(const T* __restrict mem_t, const T* __restrict w, const T* __restrict erase,
                         const T* __restrict add, const T* __restrict grad_t, int64_t W, const Sizes s,
                         T* __restrict d_mem_t, T* __restrict d_w, T* __restrict d_erase, T* __restrict d_add,
                         T* __restrict keep, T* __restrict others) {
  const int64_t N = s.N, M = s.M;
  for (int64_t m = 0; m < M; ++m) {
    const T* __restrict g = grad_t + m * N;
    const T* __restrict col = mem_t + m * N;
    T* __restrict d_col = d_mem_t + m * N;
    if (W == 1) {  // the common case in one pass: keep = 1 - w·e, no other heads
      const T e = erase[m], a = add[m];
      std::tie(d_erase[m], d_add[m]) = sums_over<T>(N, [&](int64_t i, T& de, T& da) {
        d_col[i] = g[i] * (1 - w[i] * e);
        const T d_factor = g[i] * col[i];
        d_w[i] += a * g[i] - e * d_factor;
        de -= w[i] * d_factor;
        da += w[i] * g[i];
      });
      continue;
    }
    keep_product(w, erase, W, s, m, -1, keep);
    for (int64_t i = 0; i < N; ++i) d_col[i] = g[i] * keep[i];
    for (int64_t h = 0; h < W; ++h) {
      keep_product(w, erase, W, s, m, h, others);
      const T e = erase[h * M + m], a = add[h * M + m];
      const T* __restrict wh = w + h * N;
      T* __restrict d_wh = d_w + h * N;
      std::tie(d_erase[h * M + m], d_add[h * M + m]) = sums_over<T>(N, [&](int64_t i, T& de, T& da) {
        const T d_factor = g[i] * col[i] * others[i];  // d(1 - w·e)
        d_wh[i] += a * g[i] - e * d_factor;
        de -= wh[i] * d_factor;
        da += wh[i] * g[i];
      });
    }
  }
}

// memory is [B, N, M], or [B, M, N] when passed slot-minor (`memory_t`).
Sizes sizes_of(const at::Tensor& memory, const at::Tensor& shift, bool memory_t = false) {
  return memory_t ? Sizes{memory.size(2), memory.size(1), shift.size(2)}
                  : Sizes{memory.size(1), memory.size(2), shift.size(2)};
}

template <typename F>
void for_each_item(const at::Tensor& memory, F&& f) {
  at::parallel_for(0, memory.size(0), kGrain, f);
}

// One batch item's [N, M] matrix (memory or a gradient of it) as Mᵀ [M, N]: its own storage when it is
// slot-minor (`is_t`), else transposed into `buf`.
template <typename T>
const T* as_t(const T* x, bool is_t, const Sizes s, T* buf) {
  if (is_t) return x;
  transpose(x, s.N, s.M, buf);
  return buf;
}

// One batch item's memory as Mᵀ.
template <typename T>
const T* load_memory(const T* mem, bool is_t, const Sizes s, Workspace<T>& ws) {
  return as_t(mem, is_t, s, ws.mem_t());
}

// Where a backward pass accumulates one item's memory gradient dMᵀ: straight in the output when that is
// slot-minor, else in the workspace (store_memory_grad transposes it out). Zeroed unless the pass starts
// with write_item_backward, which writes it.
template <typename T>
T* memory_grad_at(const Sizes s, Workspace<T>& ws, bool out_t, T* d_mem, bool zero = true) {
  T* d_mem_t = out_t ? d_mem : ws.d_mem_t();
  if (zero) std::fill(d_mem_t, d_mem_t + s.M * s.N, T(0));
  return d_mem_t;
}

// One item's heads (read heads first) and where their gradients go, into the workspace.
template <typename T>
void set_heads(Workspace<T>& ws, const HeadParams<T>* read, const HeadParams<T>* write, int64_t b,
               const Sizes s, const HeadGrads<T>* d_read = nullptr, const HeadGrads<T>* d_write = nullptr) {
  const int64_t R = read ? read->H : 0, W = write ? write->H : 0;
  for (int64_t h = 0; h < R; ++h) ws.heads[h] = head_at(*read, b, h, s);
  for (int64_t h = 0; h < W; ++h) ws.heads[R + h] = head_at(*write, b, h, s);
  if (d_read)
    for (int64_t h = 0; h < R; ++h) ws.d_heads[h] = grad_at(*d_read, b, h, s);
  if (d_write)
    for (int64_t h = 0; h < W; ++h) ws.d_heads[R + h] = grad_at(*d_write, b, h, s);
}

// Asks for the next batch item's [N, M] block while this one is computed: the kernels stream each item's
// memory once, and the first loop over it otherwise waits on every cache line.
template <typename T>
void prefetch_item(const T* x, int64_t count) {
  for (int64_t k = 0; k < count; k += 64 / sizeof(T)) __builtin_prefetch(x + k, 0, 2);  // into L2
}

// The finished memory gradient of one item, in the output's layout.
template <typename T>
void store_memory_grad(const Sizes s, const T* d_mem_t, bool out_t, T* d_mem) {
  if (!out_t) transpose(d_mem_t, s.M, s.N, d_mem);
}

}  // namespace

namespace cpu {

void address_forward(const at::Tensor& memory, const HeadTensors& heads, const at::Tensor& w, double cosine_eps,
                     double sharpen_floor) {
  AT_DISPATCH_FLOATING_TYPES(memory.scalar_type(), "ntm_address_forward", [&] {
    using T = scalar_t;
    const Numerics<T> num = numerics<T>(cosine_eps, sharpen_floor);
    const Sizes s = sizes_of(memory, heads.shift);
    const auto p = heads_of<T>(heads);
    const T* mem = memory.data_ptr<T>();
    T* out = w.data_ptr<T>();
    for_each_item(memory, [&](int64_t b0, int64_t b1) {
      Workspace<T> ws(s, p.H);
      for (int64_t b = b0; b < b1; ++b) {
        set_heads<T>(ws, &p, nullptr, b, s);
        address_item(load_memory(mem + b * s.N * s.M, false, s, ws), s, num, ws);
        std::copy(ws.w(), ws.w() + p.H * s.N, out + b * p.H * s.N);
      }
    });
  });
}

void address_backward(const at::Tensor& memory, const HeadTensors& heads, const at::Tensor& grad_w,
                      const at::Tensor& d_memory, const HeadTensors& d_heads, double cosine_eps,
                      double sharpen_floor) {
  AT_DISPATCH_FLOATING_TYPES(memory.scalar_type(), "ntm_address_backward", [&] {
    using T = scalar_t;
    const Numerics<T> num = numerics<T>(cosine_eps, sharpen_floor);
    const Sizes s = sizes_of(memory, heads.shift);
    const auto p = heads_of<T>(heads);
    const auto d = grads_of<T>(d_heads);
    const T *mem = memory.data_ptr<T>(), *gw = grad_w.data_ptr<T>();
    T* dmem = d_memory.data_ptr<T>();
    for_each_item(memory, [&](int64_t b0, int64_t b1) {
      Workspace<T> ws(s, p.H);
      for (int64_t b = b0; b < b1; ++b) {
        set_heads<T>(ws, &p, nullptr, b, s, &d);
        const T* mem_t = load_memory(mem + b * s.N * s.M, false, s, ws);
        address_item(mem_t, s, num, ws);
        T* d_mem_t = memory_grad_at(s, ws, false, dmem + b * s.N * s.M);
        address_item_backward(mem_t, s, num, ws, gw + b * p.H * s.N, 0, static_cast<const T*>(nullptr), d_mem_t);
        store_memory_grad(s, d_mem_t, false, dmem + b * s.N * s.M);
      }
    });
  });
}

void read_forward(const at::Tensor& memory, const at::Tensor& w, const at::Tensor& r) {
  AT_DISPATCH_FLOATING_TYPES(memory.scalar_type(), "ntm_read_forward", [&] {
    using T = scalar_t;
    const Sizes s{memory.size(1), memory.size(2), 1};
    const int64_t H = w.size(1);
    const T *mem = memory.data_ptr<T>(), *wp = w.data_ptr<T>();
    T* rp = r.data_ptr<T>();
    for_each_item(memory, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        read_rows(mem + b * s.N * s.M, wp + b * H * s.N, H, s, rp + b * H * s.M);
      }
    });
  });
}

void read_backward(const at::Tensor& memory, const at::Tensor& w, const at::Tensor& grad_r,
                   const at::Tensor& d_memory, const at::Tensor& d_w) {
  AT_DISPATCH_FLOATING_TYPES(memory.scalar_type(), "ntm_read_backward", [&] {
    using T = scalar_t;
    const Sizes s{memory.size(1), memory.size(2), 1};
    const int64_t H = w.size(1);
    const T *mem = memory.data_ptr<T>(), *wp = w.data_ptr<T>(), *gr = grad_r.data_ptr<T>();
    T *dmem = d_memory.data_ptr<T>(), *dw = d_w.data_ptr<T>();
    for_each_item(memory, [&](int64_t b0, int64_t b1) {
      Workspace<T> ws(s, 0);
      for (int64_t b = b0; b < b1; ++b) {
        T* dwb = dw + b * H * s.N;
        const T* mem_t = load_memory(mem + b * s.N * s.M, false, s, ws);
        T* d_mem_t = memory_grad_at(s, ws, false, dmem + b * s.N * s.M);
        std::fill(dwb, dwb + H * s.N, T(0));
        read_item_backward(mem_t, wp + b * H * s.N, gr + b * H * s.M, H, s, dwb, d_mem_t);
        store_memory_grad(s, d_mem_t, false, dmem + b * s.N * s.M);
      }
    });
  });
}

void write_forward(const at::Tensor& memory, const at::Tensor& w, const at::Tensor& erase, const at::Tensor& add,
                   const at::Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES(memory.scalar_type(), "ntm_write_forward", [&] {
    using T = scalar_t;
    const Sizes s{memory.size(1), memory.size(2), 1};
    const int64_t W = w.size(1), NM = s.N * s.M;
    const T *mem = memory.data_ptr<T>(), *wp = w.data_ptr<T>(), *ep = erase.data_ptr<T>(), *ap = add.data_ptr<T>();
    T* op = out.data_ptr<T>();
    for_each_item(memory, [&](int64_t b0, int64_t b1) {
      Workspace<T> ws(s, 0);
      for (int64_t b = b0; b < b1; ++b) {
        const T* mem_t = load_memory(mem + b * NM, false, s, ws);
        write_item(mem_t, wp + b * W * s.N, ep + b * W * s.M, ap + b * W * s.M, W, s, ws.d_mem_t());
        transpose(ws.d_mem_t(), s.M, s.N, op + b * NM);
      }
    });
  });
}

void write_backward(const at::Tensor& memory, const at::Tensor& w, const at::Tensor& erase, const at::Tensor& add,
                    const at::Tensor& grad_out, const at::Tensor& d_memory, const at::Tensor& d_w,
                    const at::Tensor& d_erase, const at::Tensor& d_add) {
  AT_DISPATCH_FLOATING_TYPES(memory.scalar_type(), "ntm_write_backward", [&] {
    using T = scalar_t;
    const Sizes s{memory.size(1), memory.size(2), 1};
    const int64_t W = w.size(1), NM = s.N * s.M;
    const T *mem = memory.data_ptr<T>(), *wp = w.data_ptr<T>(), *ep = erase.data_ptr<T>(), *ap = add.data_ptr<T>();
    const T* go = grad_out.data_ptr<T>();
    T *dmem = d_memory.data_ptr<T>(), *dw = d_w.data_ptr<T>(), *de = d_erase.data_ptr<T>(), *da = d_add.data_ptr<T>();
    for_each_item(memory, [&](int64_t b0, int64_t b1) {
      Workspace<T> ws(s, 0);
      for (int64_t b = b0; b < b1; ++b) {
        T* dwb = dw + b * W * s.N;
        const T* mem_t = load_memory(mem + b * NM, false, s, ws);
        const T* grad_t = as_t(go + b * NM, false, s, ws.grad_t());
        T* d_mem_t = memory_grad_at(s, ws, false, dmem + b * NM, false);
        std::fill(dwb, dwb + W * s.N, T(0));
        write_item_backward(mem_t, wp + b * W * s.N, ep + b * W * s.M, ap + b * W * s.M, grad_t, W, s, d_mem_t, dwb,
                            de + b * W * s.M, da + b * W * s.M, ws.scratch(0), ws.scratch(1));
        store_memory_grad(s, d_mem_t, false, dmem + b * NM);
      }
    });
  });
}

void memory_step_forward(const at::Tensor& memory, const HeadTensors& read_heads, const HeadTensors& write_heads,
                         const at::Tensor& erase, const at::Tensor& add, const at::Tensor& reads,
                         const at::Tensor& w_read, const at::Tensor& w_write, const at::Tensor& new_memory,
                         bool memory_t, bool new_memory_t, double cosine_eps, double sharpen_floor) {
  AT_DISPATCH_FLOATING_TYPES(memory.scalar_type(), "ntm_memory_step_forward", [&] {
    using T = scalar_t;
    const Numerics<T> num = numerics<T>(cosine_eps, sharpen_floor);
    const Sizes s = sizes_of(memory, read_heads.shift, memory_t);
    const auto rp = heads_of<T>(read_heads);
    const auto wp = heads_of<T>(write_heads);
    const int64_t R = rp.H, W = wp.H, NM = s.N * s.M;
    const T *mem = memory.data_ptr<T>(), *ep = erase.data_ptr<T>(), *ap = add.data_ptr<T>();
    T *rd = reads.data_ptr<T>(), *wr = w_read.data_ptr<T>(), *ww = w_write.data_ptr<T>();
    T* nm = new_memory.data_ptr<T>();
    for_each_item(memory, [&](int64_t b0, int64_t b1) {
      Workspace<T> ws(s, R + W);
      for (int64_t b = b0; b < b1; ++b) {
        if (b + 1 < b1) prefetch_item(mem + (b + 1) * NM, NM);
        const T* mem_t = load_memory(mem + b * NM, memory_t, s, ws);
        // Every head addresses M_{t-1}; the reads (Eq 2) happen before the write (Eq 3-4).
        set_heads(ws, &rp, &wp, b, s);
        address_item(mem_t, s, num, ws);
        std::copy(ws.w(), ws.w() + R * s.N, wr + b * R * s.N);
        std::copy(ws.w() + R * s.N, ws.w() + (R + W) * s.N, ww + b * W * s.N);
        read_item(mem_t, ws.w(), R, s, rd + b * R * s.M);
        T* out_t = new_memory_t ? nm + b * NM : ws.d_mem_t();
        write_item(mem_t, ws.w() + R * s.N, ep + b * W * s.M, ap + b * W * s.M, W, s, out_t);
        if (!new_memory_t) transpose(out_t, s.M, s.N, nm + b * NM);
      }
    });
  });
}

void memory_step_backward(const at::Tensor& memory, const HeadTensors& read_heads, const HeadTensors& write_heads,
                          const at::Tensor& erase, const at::Tensor& add, const at::Tensor& grad_reads,
                          const at::Tensor& grad_w_read, const at::Tensor& grad_w_write,
                          const at::Tensor& grad_new_memory, const at::Tensor& d_memory,
                          const HeadTensors& d_read_heads, const HeadTensors& d_write_heads,
                          const at::Tensor& d_erase, const at::Tensor& d_add, bool memory_t,
                          bool grad_new_memory_t, double cosine_eps, double sharpen_floor) {
  AT_DISPATCH_FLOATING_TYPES(memory.scalar_type(), "ntm_memory_step_backward", [&] {
    using T = scalar_t;
    const Numerics<T> num = numerics<T>(cosine_eps, sharpen_floor);
    const Sizes s = sizes_of(memory, read_heads.shift, memory_t);
    const auto rp = heads_of<T>(read_heads);
    const auto wp = heads_of<T>(write_heads);
    const auto dr = grads_of<T>(d_read_heads);
    const auto dw = grads_of<T>(d_write_heads);
    const int64_t R = rp.H, W = wp.H, N = s.N, NM = s.N * s.M;
    const T *mem = memory.data_ptr<T>(), *ep = erase.data_ptr<T>(), *ap = add.data_ptr<T>();
    const T *g_reads = grad_reads.data_ptr<T>(), *g_wr = grad_w_read.data_ptr<T>();
    const T *g_ww = grad_w_write.data_ptr<T>(), *g_mem = grad_new_memory.data_ptr<T>();
    T *dmem = d_memory.data_ptr<T>(), *de = d_erase.data_ptr<T>(), *da = d_add.data_ptr<T>();
    for_each_item(memory, [&](int64_t b0, int64_t b1) {
      Workspace<T> ws(s, R + W, R);
      std::vector<const T*> read_grads(R);
      std::vector<T*> read_d_w(R);
      for (int64_t b = b0; b < b1; ++b) {
        if (b + 1 < b1) {
          prefetch_item(mem + (b + 1) * NM, NM);
          prefetch_item(g_mem + (b + 1) * NM, NM);
        }
        const T* mem_t = load_memory(mem + b * NM, memory_t, s, ws);
        const T* grad_t = as_t(g_mem + b * NM, grad_new_memory_t, s, ws.grad_t());
        T* d_mem_t = memory_grad_at(s, ws, memory_t, dmem + b * NM, false);
        set_heads(ws, &rp, &wp, b, s, &dr, &dw);
        // d w = the upstream gradient + what the read (Eq 2: Σ_m dr[m]·M[i,m], summed in the addressing's
        // pass over the memory) and the write pass back.
        T* d_w = ws.d_w();
        const T* d_r = g_reads + b * R * s.M;
        for (int64_t h = 0; h < R; ++h) read_grads[h] = d_r + h * s.M, read_d_w[h] = d_w + h * N;
        address_item(mem_t, s, num, ws, R, read_grads.data(), read_d_w.data());
        for (int64_t k = 0; k < R * N; ++k) d_w[k] += g_wr[b * R * N + k];
        std::copy(g_ww + b * W * N, g_ww + (b + 1) * W * N, d_w + R * N);
        write_item_backward(mem_t, ws.w() + R * N, ep + b * W * s.M, ap + b * W * s.M, grad_t, W, s, d_mem_t,
                            d_w + R * N, de + b * W * s.M, da + b * W * s.M, ws.scratch(2), ws.scratch(3));
        address_item_backward(mem_t, s, num, ws, d_w, R, d_r, d_mem_t);
        store_memory_grad(s, d_mem_t, memory_t, dmem + b * NM);
      }
    });
  });
}

}  // namespace cpu
}  // namespace ntm
