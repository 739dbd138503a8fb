// One whole fused NTM time step on CPU (ntm_fast/model/fused.py, through ntm_fast/ops/extension.py), forward and backward: step_forward and
// step_backward, one call each per time step from Python (FusedStep in ntm_fast/ops/autograd.py), or called for every step of a sequence by
// sequence_forward / sequence_backward (FusedSequence, at the end of this file). Inside, the controller and head layer
// (cell_head_forward / cell_head_backward) around the fused memory_step kernels (ntm_cpu.cpp) and the output
// layer. The matrix products are ATen calls (MKL); every elementwise part is one hand-written pass: the LSTM
// gates and cell, the head activations of Section 3.3 (β = softplus, g = σ, s = softmax, γ = 1 + softplus,
// erase = σ) and their backwards. At batch sizes of 1-32 a step's ~60 separate elementwise ATen ops and ~40
// autograd nodes (dispatch, allocation, iterator setup, Python each) cost more than the memory kernel.
// float32/float64; the caller passes contiguous state and weights. The loops' simd pragmas are written
// _Pragma("omp simd"): a #pragma cannot sit inside AT_DISPATCH's macro argument.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include <cmath>
#include <utility>
#include <vector>

#include "fast_math.h"
#include "ntm.h"

namespace ntm {
namespace {

template <typename T>
inline T sigmoid(T x) {
  return fast_sigmoid(x);
}

// softplus as F.softplus (beta 1, threshold 20: linear above 20) and its derivative.
template <typename T>
inline T softplus(T x) {
  return x > T(20) ? x : std::log1p(std::exp(x));
}
template <typename T>
inline T softplus_grad(T x) {
  return x > T(20) ? T(1) : sigmoid(x);
}

// s = softmax(x) over the K shift logits of one head.
template <typename T>
void shift_softmax(const T* x, int64_t K, T* s) {
  T mx = x[0], sum = 0;
  for (int64_t k = 1; k < K; ++k) mx = std::max(mx, x[k]);
  for (int64_t k = 0; k < K; ++k) sum += (s[k] = FastMath<T>::exp(x[k] - mx));
  for (int64_t k = 0; k < K; ++k) s[k] /= sum;
}

// The head layer's output p [B, P] = [key H·M | β H | g H | s H·K | γ H | erase W·M | add W·M] (read heads
// first within each kind), split by the sizes its caller declares (NTMCell.head_sizes): the offset of each kind
// in p, and the head counts and widths those sizes imply.
struct HeadLayout {
  int64_t R, W, M, K, H, key, beta, gate, shift, gamma, erase, add, P;
  explicit HeadLayout(const std::vector<int64_t>& sizes) {
    TORCH_CHECK(sizes.size() == 7 && sizes[1] > 0,
                "ntm_fast._C: head_sizes must be the 7 split sizes [key H*M, beta H, gate H, shift H*K, gamma H, "
                "erase W*M, add W*M] with H > 0, got ", c10::IntArrayRef(sizes));
    H = sizes[1], M = sizes[0] / H, K = sizes[3] / H;
    W = M > 0 ? sizes[5] / M : 0, R = H - W;
    TORCH_CHECK(M > 0 && sizes[0] == H * M && sizes[2] == H && sizes[3] == H * K && K % 2 == 1 && sizes[4] == H &&
                    sizes[5] == W * M && sizes[6] == W * M && R >= 0,
                "ntm_fast._C: head_sizes ", c10::IntArrayRef(sizes),
                " are not [key H*M, beta H, gate H, shift H*K, gamma H, erase W*M, add W*M] for any H >= 1, M >= 1, "
                "odd K and W <= H");
    key = 0, beta = key + sizes[0], gate = beta + sizes[1], shift = gate + sizes[2], gamma = shift + sizes[3];
    erase = gamma + sizes[4], add = erase + sizes[5], P = add + sizes[6];
  }
  // Row of head h (read heads first) in its [B, R or W, ...] tensor.
  int64_t row(int64_t b, int64_t h) const { return h < R ? b * R + h : b * W + (h - R); }
};

template <typename T>
T* ptr(const at::Tensor& t) {
  return t.data_ptr<T>();
}

}  // namespace

std::vector<at::Tensor> cell_head_forward(const at::Tensor& x, const c10::optional<at::Tensor>& h_prev,
                                          const c10::optional<at::Tensor>& c_prev, const at::Tensor& reads_prev,
                                          const at::Tensor& W_ih, const at::Tensor& b_ih,
                                          const c10::optional<at::Tensor>& W_hh, const c10::optional<at::Tensor>& b_hh,
                                          const at::Tensor& W_hd, const at::Tensor& b_hd, const HeadLayout& L) {
  const bool lstm = h_prev.has_value();
  const int64_t B = x.size(0), C = W_hd.size(1), R = L.R, W = L.W, M = L.M, K = L.K;
  TORCH_CHECK(W_hd.size(0) == L.P, "ntm_fast._C: the head layer has ", W_hd.size(0),
              " outputs but head_sizes add up to ", L.P);
  const at::Tensor u = at::cat({x, reads_prev}, 1);  // [x_t; r_{t-1}]
  at::Tensor gates = at::addmm(b_ih, u, W_ih.t());   // LSTM: [B, 4C] pre-activations, then activations
  at::Tensor h = at::empty({B, C}, x.options()), c, tanh_c;
  if (lstm) {
    gates.addmm_(*h_prev, W_hh->t());
    c = at::empty({B, C}, x.options()), tanh_c = at::empty({B, C}, x.options());
  } else {
    c = tanh_c = at::empty({0}, x.options());  // placeholders: no cell state
  }
  const at::TensorOptions o = x.options();
  at::Tensor rk = at::empty({B, R, M}, o), rb = at::empty({B, R}, o), rg = at::empty({B, R}, o);
  at::Tensor rs = at::empty({B, R, K}, o), rgm = at::empty({B, R}, o);
  at::Tensor wk = at::empty({B, W, M}, o), wb = at::empty({B, W}, o), wg = at::empty({B, W}, o);
  at::Tensor ws = at::empty({B, W, K}, o), wgm = at::empty({B, W}, o);
  at::Tensor erase = at::empty({B, W, M}, o), add = at::empty({B, W, M}, o);
  at::Tensor p;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ntm_cell_head_forward", [&] {
    using T = scalar_t;
    // LSTM (nn.LSTMCell's gate order i, f, g, o): c = σ(f)·c_prev + σ(i)·tanh(g), h = σ(o)·tanh(c).
    T *G = ptr<T>(gates), *Hp = ptr<T>(h);
    if (lstm) {
      const T *bh = ptr<T>(*b_hh), *Cp = ptr<T>(*c_prev);
      T *Cn = ptr<T>(c), *TC = ptr<T>(tanh_c);
      at::parallel_for(0, B, 16, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          T* __restrict g = G + b * 4 * C;
          const T* __restrict cp = Cp + b * C;
          T *__restrict cn = Cn + b * C, *__restrict tc = TC + b * C, *__restrict hn = Hp + b * C;
          _Pragma("omp simd")
          for (int64_t j = 0; j < C; ++j) {
            const T i = sigmoid(g[j] + bh[j]), f = sigmoid(g[C + j] + bh[C + j]);
            const T gg = fast_tanh(g[2 * C + j] + bh[2 * C + j]), og = sigmoid(g[3 * C + j] + bh[3 * C + j]);
            g[j] = i, g[C + j] = f, g[2 * C + j] = gg, g[3 * C + j] = og;
            cn[j] = f * cp[j] + i * gg;
            tc[j] = fast_tanh(cn[j]);
            hn[j] = og * tc[j];
          }
        }
      });
    } else {
      _Pragma("omp simd")
      for (int64_t k = 0; k < B * C; ++k) Hp[k] = fast_tanh(G[k]);
    }
    p = at::addmm(b_hd, h, W_hd.t());
    const T* Pp = ptr<T>(p);
    T *K_[2] = {ptr<T>(rk), ptr<T>(wk)}, *Bt[2] = {ptr<T>(rb), ptr<T>(wb)}, *Gt[2] = {ptr<T>(rg), ptr<T>(wg)};
    T *St[2] = {ptr<T>(rs), ptr<T>(ws)}, *Gm[2] = {ptr<T>(rgm), ptr<T>(wgm)};
    T *E = ptr<T>(erase), *A = ptr<T>(add);
    at::parallel_for(0, B, 16, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const T* pb = Pp + b * L.P;
        for (int64_t hd = 0; hd < L.H; ++hd) {
          const int w = hd < R ? 0 : 1;
          const int64_t r = L.row(b, hd);
          for (int64_t m = 0; m < M; ++m) K_[w][r * M + m] = pb[L.key + hd * M + m];
          Bt[w][r] = softplus(pb[L.beta + hd]);
          Gt[w][r] = sigmoid(pb[L.gate + hd]);
          Gm[w][r] = 1 + softplus(pb[L.gamma + hd]);
          shift_softmax(pb + L.shift + hd * K, K, St[w] + r * K);
        }
        _Pragma("omp simd")
        for (int64_t k = 0; k < W * M; ++k) {
          E[b * W * M + k] = sigmoid(pb[L.erase + k]);
          A[b * W * M + k] = pb[L.add + k];
        }
      }
    });
  });
  // Saved for backward: u, h, c, tanh_c, the activated gates, p; then the read heads [key, β, g, s, γ] and
  // the write heads [key, β, g, s, γ, erase, add].
  return {u, h, c, tanh_c, gates, p, rk, rb, rg, rs, rgm, wk, wb, wg, ws, wgm, erase, add};
}

std::vector<at::Tensor> cell_head_backward(const at::Tensor& d_h_in, const c10::optional<at::Tensor>& d_c,
                                           const std::vector<at::Tensor>& d_heads, const at::Tensor& u,
                                           const c10::optional<at::Tensor>& h_prev,
                                           const c10::optional<at::Tensor>& c_prev, const at::Tensor& h,
                                           const at::Tensor& tanh_c, const at::Tensor& gates, const at::Tensor& p,
                                           const at::Tensor& W_ih, const c10::optional<at::Tensor>& W_hh,
                                           const at::Tensor& W_hd, const HeadLayout& L) {
  // d_heads: read [key, β, g, s, γ], then write [key, β, g, s, γ, erase, add] (gradients of the activated
  // heads, from the memory_step backward).
  const bool lstm = h_prev.has_value();
  const int64_t B = h.size(0), C = h.size(1), R = L.R, W = L.W, M = L.M, K = L.K;
  at::Tensor d_p = at::empty({B, L.P}, h.options());
  at::Tensor d_pre = at::empty({B, lstm ? 4 * C : C}, h.options());
  at::Tensor d_c_prev = lstm ? at::empty({B, C}, h.options()) : at::Tensor();
  at::Tensor d_h;
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "ntm_cell_head_backward", [&] {
    using T = scalar_t;
    const T* Pp = ptr<T>(p);
    T* DP = ptr<T>(d_p);
    const T *dK[2] = {ptr<T>(d_heads[0]), ptr<T>(d_heads[5])}, *dB[2] = {ptr<T>(d_heads[1]), ptr<T>(d_heads[6])};
    const T *dG[2] = {ptr<T>(d_heads[2]), ptr<T>(d_heads[7])}, *dS[2] = {ptr<T>(d_heads[3]), ptr<T>(d_heads[8])};
    const T *dGm[2] = {ptr<T>(d_heads[4]), ptr<T>(d_heads[9])};
    const T *dE = ptr<T>(d_heads[10]), *dA = ptr<T>(d_heads[11]);
    at::parallel_for(0, B, 16, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const T* pb = Pp + b * L.P;
        T* db = DP + b * L.P;
        for (int64_t hd = 0; hd < L.H; ++hd) {
          const int w = hd < R ? 0 : 1;
          const int64_t r = L.row(b, hd);
          for (int64_t m = 0; m < M; ++m) db[L.key + hd * M + m] = dK[w][r * M + m];
          db[L.beta + hd] = dB[w][r] * softplus_grad(pb[L.beta + hd]);
          const T g = sigmoid(pb[L.gate + hd]);
          db[L.gate + hd] = dG[w][r] * g * (1 - g);
          db[L.gamma + hd] = dGm[w][r] * softplus_grad(pb[L.gamma + hd]);
          T* ds = db + L.shift + hd * K;  // softmax backward: s ⊙ (d_s - <s, d_s>), s recomputed in ds
          shift_softmax(pb + L.shift + hd * K, K, ds);
          T dot = 0;
          for (int64_t k = 0; k < K; ++k) dot += ds[k] * dS[w][r * K + k];
          for (int64_t k = 0; k < K; ++k) ds[k] *= dS[w][r * K + k] - dot;
        }
        _Pragma("omp simd")
        for (int64_t k = 0; k < W * M; ++k) {
          const T e = sigmoid(pb[L.erase + k]);
          db[L.erase + k] = dE[b * W * M + k] * e * (1 - e);
          db[L.add + k] = dA[b * W * M + k];
        }
      }
    });
    d_h = d_h_in.addmm(d_p, W_hd);  // the head layer p = h W_hdᵀ + b_hd
    const T *Dh = ptr<T>(d_h), *Hp = ptr<T>(h);
    T* Dpre = ptr<T>(d_pre);
    if (lstm) {
      const T *G = ptr<T>(gates), *TC = ptr<T>(tanh_c), *Cp = ptr<T>(*c_prev), *Dc = ptr<T>(*d_c);
      T* Dcp = ptr<T>(d_c_prev);
      at::parallel_for(0, B, 16, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          const T* __restrict g = G + b * 4 * C;
          T* __restrict dp = Dpre + b * 4 * C;
          _Pragma("omp simd")
          for (int64_t j = 0; j < C; ++j) {
            const int64_t k = b * C + j;
            const T i = g[j], f = g[C + j], gg = g[2 * C + j], o = g[3 * C + j], tc = TC[k];
            const T dc = Dc[k] + Dh[k] * o * (1 - tc * tc);
            dp[j] = dc * gg * i * (1 - i);
            dp[C + j] = dc * Cp[k] * f * (1 - f);
            dp[2 * C + j] = dc * i * (1 - gg * gg);
            dp[3 * C + j] = Dh[k] * tc * o * (1 - o);
            Dcp[k] = dc * f;
          }
        }
      });
    } else {
      _Pragma("omp simd")
      for (int64_t k = 0; k < B * C; ++k) Dpre[k] = Dh[k] * (1 - Hp[k] * Hp[k]);
    }
  });
  const at::Tensor dW_hd = d_p.t().mm(h), db_hd = d_p.sum(0);
  // The two products with the narrow side of u (29 columns) are formed transposed, (W_ihᵀ d_preᵀ)ᵀ and
  // (uᵀ d_pre)ᵀ: MKL runs that orientation faster (benchmarks/cpu_gemm_orientation.py), and autograd takes
  // the strided results as they are.
  const at::Tensor d_u = W_ih.t().mm(d_pre.t()).t(), dW_ih = u.t().mm(d_pre).t(), db_ih = d_pre.sum(0);
  at::Tensor d_h_prev, dW_hh;
  if (lstm) d_h_prev = d_pre.mm(*W_hh), dW_hh = d_pre.t().mm(*h_prev);
  return {d_u, d_h_prev, d_c_prev, dW_ih, db_ih, dW_hh, dW_hd, db_hd};
}

}  // namespace ntm

namespace ntm {
namespace {

HeadTensors head_tensors(const std::vector<at::Tensor>& t, size_t from, const at::Tensor& w_prev) {
  return {t[from], t[from + 1], t[from + 2], t[from + 3], t[from + 4], w_prev};
}

}  // namespace

// One whole fused time step (ntm_fast/model/fused.py): cell_head_forward, the memory_step kernels, the output layer.
// Returns logits, h, c, reads [B, R·M], w_read, w_write, new memory (slot-minor), then what the backward
// needs: u, tanh_c, gates, p, hr, and the 12 activated head tensors.
std::vector<at::Tensor> step_forward(const at::Tensor& x, const c10::optional<at::Tensor>& h_prev,
                                     const c10::optional<at::Tensor>& c_prev, const at::Tensor& reads_prev,
                                     const at::Tensor& w_read_prev, const at::Tensor& w_write_prev,
                                     const at::Tensor& memory, const at::Tensor& W_ih, const at::Tensor& b_ih,
                                     const c10::optional<at::Tensor>& W_hh, const c10::optional<at::Tensor>& b_hh,
                                     const at::Tensor& W_hd, const at::Tensor& b_hd, const at::Tensor& W_out,
                                     const at::Tensor& b_out, const std::vector<int64_t>& head_sizes,
                                     double cosine_eps, double sharpen_floor) {
  const HeadLayout L(head_sizes);
  const int64_t R = L.R, W = L.W, M = L.M;
  auto cell = cell_head_forward(x, h_prev, c_prev, reads_prev, W_ih, b_ih, W_hh, b_hh, W_hd, b_hd, L);
  const at::Tensor &u = cell[0], &h = cell[1];
  const std::vector<at::Tensor> heads(cell.begin() + 6, cell.end());  // read 5, write 5 + erase, add
  const int64_t B = x.size(0), N = w_read_prev.size(2);
  const auto [mem, memory_t] = kernel_memory(memory);
  const at::Tensor reads = at::empty({B, R, M}, x.options()), w_read = at::empty({B, R, N}, x.options());
  const at::Tensor w_write = at::empty({B, W, N}, x.options()), new_memory_t = at::empty({B, M, N}, x.options());
  cpu::memory_step_forward(mem, head_tensors(heads, 0, w_read_prev.contiguous()),
                           head_tensors(heads, 5, w_write_prev.contiguous()),
                           heads[10], heads[11], reads, w_read, w_write, new_memory_t, memory_t, true, cosine_eps,
                           sharpen_floor);
  const at::Tensor hr = at::cat({h, reads.view({B, R * M})}, 1);
  const at::Tensor logits = at::addmm(b_out, hr, W_out.t());  // y = [h; r] W_outᵀ + b_out
  std::vector<at::Tensor> out = {logits, h, cell[2], reads.view({B, R * M}), w_read, w_write,
                                 new_memory_t.transpose(1, 2), u, cell[3], cell[4], cell[5], hr};
  out.insert(out.end(), heads.begin(), heads.end());
  return out;
}

// Its backward: the output layer, the memory_step backward kernel, cell_head_backward. Returns d_u, d_h_prev,
// d_c_prev, d_w_read_prev, d_w_write_prev, d_memory (in the memory's layout), then the weight gradients
// dW_ih, db_ih, dW_hh, dW_hd, db_hd, dW_out, db_out.
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
                                      double cosine_eps, double sharpen_floor) {
  const HeadLayout L(head_sizes);
  const int64_t B = h.size(0), C = h.size(1), N = w_read_prev.size(2), R = L.R, W = L.W, M = L.M;
  const at::Tensor dW_out = d_logits.t().mm(hr), db_out = d_logits.sum(0);
  const at::Tensor d_hr = d_logits.mm(W_out);
  // The upstream gradients may arrive strided (d_reads from the next step's transposed d_u, or any from the
  // caller's loss): the kernels below take contiguous rows.
  const at::Tensor d_h = (d_h_in + d_hr.narrow(1, 0, C)).contiguous();
  const at::Tensor d_reads = (d_reads_in + d_hr.narrow(1, C, R * M)).contiguous().view({B, R, M});
  // Memory interaction (Eq 2-9).
  const auto [mem, memory_t] = kernel_memory(memory);
  const auto [d_new, d_new_t] = kernel_memory(d_new_memory);
  const at::TensorOptions o = h.options();
  const at::Tensor d_memory = at::empty(mem.sizes(), o);  // in the memory's layout, as the kernel writes it
  std::vector<at::Tensor> d_heads;  // read [key, β, g, s, γ], write [key, β, g, s, γ, erase, add]
  for (const at::Tensor& t : heads) d_heads.push_back(at::empty(t.sizes(), o));
  const at::Tensor d_w_read_prev = at::empty({B, R, N}, o), d_w_write_prev = at::empty({B, W, N}, o);
  cpu::memory_step_backward(mem, head_tensors(heads, 0, w_read_prev.contiguous()),
                            head_tensors(heads, 5, w_write_prev.contiguous()),
                            heads[10], heads[11], d_reads, d_w_read.contiguous(), d_w_write.contiguous(), d_new,
                            d_memory, head_tensors(d_heads, 0, d_w_read_prev),
                            head_tensors(d_heads, 5, d_w_write_prev), d_heads[10], d_heads[11], memory_t, d_new_t,
                            cosine_eps, sharpen_floor);
  auto cell = cell_head_backward(d_h, d_c, d_heads, u, h_prev, c_prev, h, tanh_c, gates, p, W_ih, W_hh, W_hd, L);
  return {cell[0], cell[1], cell[2], d_w_read_prev, d_w_write_prev, memory_t ? d_memory.transpose(1, 2) : d_memory,
          cell[3], cell[4], cell[5], cell[6], cell[7], dW_out, db_out};
}


namespace {

// step_forward's result: outputs, then what its backward needs (the 12 head tensors from kHeads on).
enum StepResult : size_t { kLogits, kH, kC, kReads, kWRead, kWWrite, kMemory, kU, kTanhC, kGates, kP, kHr, kHeads };
// A chunk's recurrent state as the tape's init holds it; step_forward's result holds it one place later.
enum State : size_t { sH, sC, sReads, sWRead, sWWrite, sMemory };

c10::optional<at::Tensor> optional_if(bool present, const at::Tensor& t) {
  return present ? c10::optional<at::Tensor>(t) : c10::nullopt;
}

// Chunk boundaries: one chunk per thread (fewer for a smaller batch), sizes differing by at most one.
std::vector<int64_t> chunk_bounds(int64_t B) {
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), B));
  std::vector<int64_t> bounds(chunks + 1);
  for (int64_t c = 0; c <= chunks; ++c) bounds[c] = c * B / chunks;
  return bounds;
}

// Runs f(c, b0, nb) for every chunk c (rows b0 .. b0+nb), each chunk on its own thread. The kernels and ATen
// calls inside see a parallel region and run serially (at::parallel_for) or single-threaded (MKL). Autograd is
// off in every thread: an OpenMP worker does not inherit the caller's thread-local grad mode, and with it on,
// each ATen call on a weight (which requires grad) would record a graph node nobody differentiates.
template <typename F>
void for_each_chunk(const std::vector<int64_t>& bounds, F&& f) {
  const int64_t chunks = static_cast<int64_t>(bounds.size()) - 1;
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    const at::NoGradGuard no_grad;
    for (int64_t c = c0; c < c1; ++c) f(c, bounds[c], bounds[c + 1] - bounds[c]);
  });
}

}  // namespace

// x [T, B, X] from the initial state (h0, c0 [B, C] or nullopt for a feedforward controller; reads0 [B, R·M];
// w_read0 [B, R, N]; w_write0 [B, W, N]; memory0 [B, N, M], all contiguous) -> logits [T, B, Y] and the tape.
// Each step is step_forward on the chunk's rows. Without keep_tape (no gradient wanted) each step's tensors
// are dropped once the next step has its state, and the tape holds no steps.
std::pair<at::Tensor, std::shared_ptr<SequenceTape>> sequence_forward(
    const at::Tensor& x, const c10::optional<at::Tensor>& h0, const c10::optional<at::Tensor>& c0,
    const at::Tensor& reads0, const at::Tensor& w_read0, const at::Tensor& w_write0, const at::Tensor& memory0,
    const at::Tensor& W_ih, const at::Tensor& b_ih, const c10::optional<at::Tensor>& W_hh,
    const c10::optional<at::Tensor>& b_hh, const at::Tensor& W_hd, const at::Tensor& b_hd, const at::Tensor& W_out,
    const at::Tensor& b_out, const std::vector<int64_t>& head_sizes, double cosine_eps, double sharpen_floor,
    bool keep_tape) {
  const int64_t T = x.size(0), B = x.size(1);
  auto tape = std::make_shared<SequenceTape>();
  tape->head_sizes = head_sizes, tape->cosine_eps = cosine_eps, tape->sharpen_floor = sharpen_floor;
  tape->X = x.size(2), tape->lstm = h0.has_value();
  tape->bounds = chunk_bounds(B);
  const size_t chunks = tape->bounds.size() - 1;
  tape->init.resize(chunks), tape->steps.resize(chunks);
  const at::Tensor logits = at::empty({T, B, W_out.size(0)}, x.options());
  const bool lstm = tape->lstm;
  for_each_chunk(tape->bounds, [&](int64_t c, int64_t b0, int64_t nb) {
    const auto rows = [&](const at::Tensor& t) { return t.narrow(0, b0, nb); };
    std::vector<at::Tensor> state = {lstm ? rows(*h0) : at::Tensor(), lstm ? rows(*c0) : at::Tensor(), rows(reads0),
                                     rows(w_read0), rows(w_write0), rows(memory0)};
    tape->init[c] = state;
    auto& steps = tape->steps[c];
    if (keep_tape) steps.reserve(T);
    for (int64_t t = 0; t < T; ++t) {
      std::vector<at::Tensor> out =
          step_forward(rows(x[t]), optional_if(lstm, state[sH]), optional_if(lstm, state[sC]), state[sReads],
                       state[sWRead], state[sWWrite], state[sMemory], W_ih, b_ih, W_hh, b_hh, W_hd, b_hd, W_out, b_out,
                       head_sizes, cosine_eps, sharpen_floor);
      logits[t].narrow(0, b0, nb).copy_(out[kLogits]);
      state = {out[kH], out[kC], out[kReads], out[kWRead], out[kWWrite], out[kMemory]};
      if (keep_tape) steps.push_back(std::move(out));
    }
  });
  return {logits, tape};
}

// Backward of sequence_forward for the logits' gradient [T, B, Y]: each chunk runs step_backward from the last
// step to the first on its own thread, summing its weight gradients; the chunks' sums are added at the end.
// Returns d_x [T, B, X]; the initial state's gradients d_h0, d_c0 (undefined for a feedforward controller),
// d_reads0, d_w_read0, d_w_write0, d_memory0 (row-major); then dW_ih, db_ih, dW_hh (undefined for a feedforward
// controller), dW_hd, db_hd, dW_out, db_out.
std::vector<at::Tensor> sequence_backward(const SequenceTape& tape, const at::Tensor& d_logits, const at::Tensor& W_ih,
                                          const c10::optional<at::Tensor>& W_hh, const at::Tensor& W_hd,
                                          const at::Tensor& W_out) {
  const HeadLayout L(tape.head_sizes);
  const int64_t T = d_logits.size(0), B = d_logits.size(1), R = L.R, W = L.W, M = L.M, X = tape.X;
  TORCH_CHECK(T == static_cast<int64_t>(tape.steps[0].size()) && B == tape.bounds.back(),
              "ntm_fast._C.sequence_backward: d_logits of shape ", d_logits.sizes(), " does not match the tape's ",
              tape.steps[0].size(), " steps of batch ", tape.bounds.back(),
              " (a forward run without keep_tape keeps no steps)");
  const bool lstm = tape.lstm;
  const int64_t C = W_hd.size(1), N = tape.init[0][sWRead].size(2);
  const at::TensorOptions o = d_logits.options();
  const at::Tensor d_x = at::empty({T, B, X}, o), d_reads0 = at::empty({B, R * M}, o);
  const at::Tensor d_h0 = lstm ? at::empty({B, C}, o) : at::Tensor(), d_c0 = lstm ? at::empty({B, C}, o) : at::Tensor();
  const at::Tensor d_w_read0 = at::empty({B, R, N}, o), d_w_write0 = at::empty({B, W, N}, o);
  const at::Tensor d_memory0 = at::empty({B, N, M}, o);
  const size_t chunks = tape.bounds.size() - 1;
  std::vector<std::vector<at::Tensor>> weight_grads(chunks);  // per chunk: dW_ih, db_ih, dW_hh, dW_hd, ... db_out
  for_each_chunk(tape.bounds, [&](int64_t c, int64_t b0, int64_t nb) {
    const auto rows = [&](const at::Tensor& t) { return t.narrow(0, b0, nb); };
    at::Tensor d_h = at::zeros({nb, C}, o), d_c = lstm ? at::zeros({nb, C}, o) : at::Tensor();
    at::Tensor d_reads = at::zeros({nb, R * M}, o), d_w_read = at::zeros({nb, R, N}, o);
    at::Tensor d_w_write = at::zeros({nb, W, N}, o), d_memory = at::zeros({nb, N, M}, o);
    std::vector<at::Tensor>& sums = weight_grads[c];
    for (int64_t t = T - 1; t >= 0; --t) {
      const std::vector<at::Tensor>& out = tape.steps[c][t];
      // The state the step started from: the initial one, or the previous step's outputs (one place later).
      const std::vector<at::Tensor>& prev = t > 0 ? tape.steps[c][t - 1] : tape.init[c];
      const size_t at = t > 0 ? 1 : 0;
      const std::vector<at::Tensor> heads(out.begin() + kHeads, out.end());
      std::vector<at::Tensor> g = step_backward(
          rows(d_logits[t]).contiguous(), d_h, optional_if(lstm, d_c), d_reads, d_w_read, d_w_write, d_memory,
          prev[sMemory + at], prev[sWRead + at], prev[sWWrite + at], heads, out[kU], optional_if(lstm, prev[sH + at]),
          optional_if(lstm, prev[sC + at]), out[kH], out[kTanhC], out[kGates], out[kP], out[kHr], W_ih, W_hh, W_hd,
          W_out, tape.head_sizes, tape.cosine_eps, tape.sharpen_floor);
      // g: d_u = [d_x, d_reads], d_h_prev, d_c_prev, d_w_read_prev, d_w_write_prev, d_memory_prev, then the
      // step's weight gradients.
      d_x[t].narrow(0, b0, nb).copy_(g[0].narrow(1, 0, X));
      d_reads = g[0].narrow(1, X, R * M);
      if (lstm) d_h = g[1], d_c = g[2];  // a feedforward controller's h is no state: d_h stays zero
      d_w_read = g[3], d_w_write = g[4], d_memory = g[5];
      if (sums.empty()) {
        sums.assign(g.begin() + 6, g.end());
      } else {
        for (size_t k = 0; k < sums.size(); ++k)
          if (sums[k].defined()) sums[k].add_(g[6 + k]);
      }
    }
    if (lstm) rows(d_h0).copy_(d_h), rows(d_c0).copy_(d_c);
    rows(d_reads0).copy_(d_reads), rows(d_w_read0).copy_(d_w_read), rows(d_w_write0).copy_(d_w_write);
    rows(d_memory0).copy_(d_memory);
  });
  std::vector<at::Tensor> out = {d_x, d_h0, d_c0, d_reads0, d_w_read0, d_w_write0, d_memory0};
  for (size_t k = 0; k < weight_grads[0].size(); ++k) {
    at::Tensor sum = weight_grads[0][k];
    for (size_t c = 1; c < chunks && sum.defined(); ++c) sum = sum + weight_grads[c][k];
    out.push_back(sum.defined() ? sum.contiguous() : sum);
  }
  return out;
}

}  // namespace ntm
