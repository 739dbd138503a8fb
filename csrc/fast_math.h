// SIMD helpers of the CPU kernels (ntm_cpu.cpp, ntm_cell.cpp), apart from the NTM math (ntm_math.h):
// vectorizable exp, log, sigmoid and tanh (branch-free and inlined, so that GCC vectorizes the `omp simd` loops
// that call them; libm's scalar calls cost ~15% of the memory kernels' time and most of the fused cell's
// elementwise passes), reductions in vector lanes, and a register-tiled transpose.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#ifdef __AVX__
#include <immintrin.h>
#endif

namespace ntm {

// Vectorizable exp and log (branch-free, inlined into `omp simd` loops; libm's scalar calls were ~15% of the
// kernels' time). exp: x = n·ln2 + r with |r| ≤ ln2/2 (Cody-Waite split of ln2), a polynomial for e^r
// (Cephes' degree-6 minimax for float, Taylor to r^13 for double: both within ~1-2 ulp), times 2^n built
// from exponent bits; below log of the smallest normal it returns 0. log (for positive normal x, as
// sharpening passes it): x = 2^e·m with m in [√½, √2), log m = 2·atanh((m-1)/(m+1)) as an odd series.
// NaN passes through both, and log(+inf) = +inf (a non-finite w_s must reach the weights as the reference's).
template <typename T>
struct FastMath;

template <>
struct FastMath<float> {
  static inline __attribute__((always_inline)) float exp(float x) {
    const float lo = -87.33654f, hi = 88.37626f;  // log(FLT_MIN), just under log(FLT_MAX)
    float xc = x < lo ? lo : x;
    xc = xc > hi ? hi : xc;
    const float shifter = 12582912.0f;  // 1.5·2^23: adding it rounds to an integer
    const float n = (xc * 1.44269504088896341f + shifter) - shifter;
    const float r = (xc - n * 0.693359375f) - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    const float scale = __builtin_bit_cast(float, (static_cast<int32_t>(n) + 127) << 23);
    return x < lo ? 0.0f : p * scale;
  }
  static inline __attribute__((always_inline)) float log(float x) {
    // Offsetting the bits by those of √½ puts the mantissa m in [√½, √2) and the rest in the exponent e.
    const int32_t i = __builtin_bit_cast(int32_t, x) - 0x3f3504f3;
    const float e = static_cast<float>(i >> 23);
    const float m = __builtin_bit_cast(float, (i & 0x007fffff) + 0x3f3504f3);
    const float s = (m - 1.0f) / (m + 1.0f), s2 = s * s;
    float q = 1.0f / 11;
    q = q * s2 + 1.0f / 9;
    q = q * s2 + 1.0f / 7;
    q = q * s2 + 1.0f / 5;
    q = q * s2 + 1.0f / 3;
    const float log_m = 2.0f * s + 2.0f * s * s2 * q;
    const float y = e * 0.693359375f + (e * -2.12194440e-4f + log_m);
    return x < std::numeric_limits<float>::infinity() ? y : x;
  }
};

template <>
struct FastMath<double> {
  static inline __attribute__((always_inline)) double exp(double x) {
    const double lo = -708.3964185322641, hi = 709.0;  // log(DBL_MIN)
    double xc = x < lo ? lo : x;
    xc = xc > hi ? hi : xc;
    const double shifter = 6755399441055744.0;  // 1.5·2^52
    const double n = (xc * 1.4426950408889634 + shifter) - shifter;
    const double r = (xc - n * 6.93147180369123816490e-01) - n * 1.90821492927058770002e-10;
    double p = 1.0 / 6227020800.0;  // 1/13!
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * (r * r) + r + 1.0;
    const double scale = __builtin_bit_cast(double, (static_cast<int64_t>(n) + 1023) << 52);
    return x < lo ? 0.0 : p * scale;
  }
  static inline __attribute__((always_inline)) double log(double x) {
    const int64_t i = __builtin_bit_cast(int64_t, x) - 0x3fe6a09e667f3bcdLL;
    const double e = static_cast<double>(i >> 52);
    const double m = __builtin_bit_cast(double, (i & 0x000fffffffffffffLL) + 0x3fe6a09e667f3bcdLL);
    const double s = (m - 1.0) / (m + 1.0), s2 = s * s;
    double q = 1.0 / 27;
    q = q * s2 + 1.0 / 25;
    q = q * s2 + 1.0 / 23;
    q = q * s2 + 1.0 / 21;
    q = q * s2 + 1.0 / 19;
    q = q * s2 + 1.0 / 17;
    q = q * s2 + 1.0 / 15;
    q = q * s2 + 1.0 / 13;
    q = q * s2 + 1.0 / 11;
    q = q * s2 + 1.0 / 9;
    q = q * s2 + 1.0 / 7;
    q = q * s2 + 1.0 / 5;
    q = q * s2 + 1.0 / 3;
    const double log_m = 2.0 * s + 2.0 * s * s2 * q;
    const double y = e * 6.93147180369123816490e-01 + (e * 1.90821492927058770002e-10 + log_m);
    return x < std::numeric_limits<double>::infinity() ? y : x;
  }
};

// σ(x) = 1 / (1 + e^-x); tanh for float as Cephes' tanhf (an odd polynomial below |x| = 0.625, else
// 1 - 2 / (e^{2|x|} + 1); ~2 ulp), for double libm's (the float32 path is the fast one).
template <typename T>
inline __attribute__((always_inline)) T fast_sigmoid(T x) {
  return T(1) / (T(1) + FastMath<T>::exp(-x));
}

inline __attribute__((always_inline)) float fast_tanh(float x) {
  const float a = x < 0 ? -x : x, z = x * x;
  const float small = ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z - 5.37397155531e-2f) * z +
                        1.33314422036e-1f) * z - 3.33332819422e-1f) * z * x + x;
  float big = 1.0f - 2.0f / (FastMath<float>::exp(2.0f * a) + 1.0f);
  big = x < 0 ? -big : big;
  return a < 0.625f ? small : big;
}

inline double fast_tanh(double x) { return std::tanh(x); }

// The vector-lane reductions and the transpose have internal linkage in each file that includes them, as
// helpers of one kernel file: GCC then inlines and specializes them per call site (their Op arguments, function
// pointers, included) as freely as it did when they were the kernel file's own.
namespace {

// Reductions over the slots in vector lanes: op over f(i), i < n, with lane ii of each block of kLanes taking
// the terms i ≡ ii (mod kLanes), the lanes then combined pairwise. (GCC ends a `#pragma omp simd reduction` by
// combining its lanes one after another through the stack, a 16-long dependency chain per reduction; the
// kernels take dozens of short reductions per batch item: the key gradient M per head, the read M per read
// head, the write backward 2·M per write head, and every softmax and its backward.) f(i) is called once per
// i, in order within a block, so it may also store.
template <typename T>
constexpr int kLanes = 64 / sizeof(T);  // one AVX-512 register

template <typename T, typename Op>
T lane_total(T* acc, Op op) {
#pragma GCC unroll 8
  for (int w = kLanes<T> / 2; w > 0; w /= 2)
#pragma GCC unroll 16
    for (int ii = 0; ii < w; ++ii) acc[ii] = op(acc[ii], acc[ii + w]);
  return acc[0];
}

template <typename T, typename F, typename Op>
T reduce_over(int64_t n, T init, F&& f, Op op) {
  constexpr int L = kLanes<T>;
  T acc[L];
  for (int ii = 0; ii < L; ++ii) acc[ii] = init;
  int64_t i0 = 0;
  for (; i0 + L <= n; i0 += L) {
#pragma omp simd
    for (int ii = 0; ii < L; ++ii) acc[ii] = op(acc[ii], f(i0 + ii));
  }
  for (int ii = 0; i0 + ii < n; ++ii) acc[ii] = op(acc[ii], f(i0 + ii));
  return lane_total(acc, op);
}

template <typename T>
inline T plus(T a, T b) {
  return a + b;
}

template <typename T>
inline T larger(T a, T b) {
  return a > b ? a : b;
}

// Two sums in one pass: f(i, a, b) adds its terms to a and b.
template <typename T, typename F>
std::pair<T, T> sums_over(int64_t n, F&& f) {
  constexpr int L = kLanes<T>;
  T a[L] = {}, b[L] = {};
  int64_t i0 = 0;
  for (; i0 + L <= n; i0 += L) {
#pragma omp simd
    for (int ii = 0; ii < L; ++ii) f(i0 + ii, a[ii], b[ii]);
  }
  for (int ii = 0; i0 + ii < n; ++ii) f(i0 + ii, a[ii], b[ii]);
  return {lane_total(a, plus<T>), lane_total(b, plus<T>)};
}

// Σ_{i<n} f(i) and max_{i<n} f(i) (-inf for n = 0).
template <typename T, typename F>
T sum_over(int64_t n, F&& f) {
  return reduce_over<T>(n, T(0), f, plus<T>);
}

template <typename T, typename F>
T max_over(int64_t n, F&& f) {
  return reduce_over<T>(n, -std::numeric_limits<T>::infinity(), f, larger<T>);
}

#ifdef __AVX__
constexpr bool kAvx = true;
#else
constexpr bool kAvx = false;
#endif

// A square tile of the transpose in registers (AVX): 8×8 floats or 4×4 doubles (used only when kAvx).
inline void transpose_tile(const float* src, int64_t ld_src, float* dst, int64_t ld_dst) {
#ifdef __AVX__
  __m256 r[8], t[8];
  for (int k = 0; k < 8; ++k) r[k] = _mm256_loadu_ps(src + k * ld_src);
  for (int k = 0; k < 8; k += 2) {
    t[k] = _mm256_unpacklo_ps(r[k], r[k + 1]);
    t[k + 1] = _mm256_unpackhi_ps(r[k], r[k + 1]);
  }
  for (int k = 0; k < 8; k += 4) {
    r[k] = _mm256_shuffle_ps(t[k], t[k + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[k + 1] = _mm256_shuffle_ps(t[k], t[k + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[k + 2] = _mm256_shuffle_ps(t[k + 1], t[k + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[k + 3] = _mm256_shuffle_ps(t[k + 1], t[k + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int k = 0; k < 4; ++k) {
    _mm256_storeu_ps(dst + k * ld_dst, _mm256_permute2f128_ps(r[k], r[k + 4], 0x20));
    _mm256_storeu_ps(dst + (k + 4) * ld_dst, _mm256_permute2f128_ps(r[k], r[k + 4], 0x31));
  }
#endif
}

inline void transpose_tile(const double* src, int64_t ld_src, double* dst, int64_t ld_dst) {
#ifdef __AVX__
  const __m256d r0 = _mm256_loadu_pd(src), r1 = _mm256_loadu_pd(src + ld_src);
  const __m256d r2 = _mm256_loadu_pd(src + 2 * ld_src), r3 = _mm256_loadu_pd(src + 3 * ld_src);
  const __m256d t0 = _mm256_unpacklo_pd(r0, r1), t1 = _mm256_unpackhi_pd(r0, r1);
  const __m256d t2 = _mm256_unpacklo_pd(r2, r3), t3 = _mm256_unpackhi_pd(r2, r3);
  _mm256_storeu_pd(dst, _mm256_permute2f128_pd(t0, t2, 0x20));
  _mm256_storeu_pd(dst + ld_dst, _mm256_permute2f128_pd(t1, t3, 0x20));
  _mm256_storeu_pd(dst + 2 * ld_dst, _mm256_permute2f128_pd(t0, t2, 0x31));
  _mm256_storeu_pd(dst + 3 * ld_dst, _mm256_permute2f128_pd(t1, t3, 0x31));
#endif
}

// dst [cols, rows] = srcᵀ for src [rows, cols]: register tiles (the plain loop's one-element strided stores
// were a third of a backward pass), then the ragged edges element by element.
template <typename T>
void transpose(const T* __restrict src, int64_t rows, int64_t cols, T* __restrict dst) {
  constexpr int64_t kTile = 32 / sizeof(T);
  int64_t rt = 0, ct = 0;
  if (kAvx) {
    rt = rows - rows % kTile;
    ct = cols - cols % kTile;
    for (int64_t r0 = 0; r0 < rt; r0 += kTile)
      for (int64_t c0 = 0; c0 < ct; c0 += kTile) transpose_tile(src + r0 * cols + c0, cols, dst + c0 * rows + r0, rows);
  }
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = r < rt ? ct : 0; c < cols; ++c) dst[c * rows + r] = src[r * cols + c];
  }
}

}  // namespace

}  // namespace ntm
