// Vectorizable elementwise math for the CPU kernels (ntm_cpu.cpp, ntm_cell.cpp): branch-free and inlined,
// so that GCC vectorizes the `omp simd` loops that call it (libm's scalar calls cost ~15% of the memory
// kernels' time and most of the fused cell's elementwise passes).
#pragma once

#include <cmath>
#include <cstdint>

namespace ntm {

// Vectorizable exp and log (branch-free, inlined into `omp simd` loops; libm's scalar calls were ~15% of the
// kernels' time). exp: x = n·ln2 + r with |r| ≤ ln2/2 (Cody-Waite split of ln2), a polynomial for e^r
// (Cephes' degree-6 minimax for float, Taylor to r^13 for double: both within ~1-2 ulp), times 2^n built
// from exponent bits; below log of the smallest normal it returns 0. log (for positive normal x, as
// sharpening passes it): x = 2^e·m with m in [√½, √2), log m = 2·atanh((m-1)/(m+1)) as an odd series.
// NaN passes through both.
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
    return x != x ? x : y;
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
    return x != x ? x : y;
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

}  // namespace ntm
