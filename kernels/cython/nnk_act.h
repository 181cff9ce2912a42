/* Activation functions and their derivatives, for float and double: the one place the
 * Cython backend defines them, shared by the elementwise kernels and the GEMM epilogue.
 *
 * Codes follow nnkern.backends.ACTIVATIONS. Block functions work on row-major blocks with
 * a row stride, so the GEMM can apply them to one output tile while it is in L1; each
 * activation has its own loop so that the simple ones vectorise.
 */
#ifndef NNK_ACT_H
#define NNK_ACT_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "nnk_dispatch.h"

enum {
    NNK_IDENTITY = 0,
    NNK_SIGMOID = 1,
    NNK_TANH = 2,
    NNK_RELU = 3,
    NNK_LEAKY_RELU = 4,
    NNK_GELU = 5,
    NNK_GELU_TANH = 6,
    NNK_STEP = 7
};

/* Which forward quantity a derivative is computed from (as GRAD_NEEDS_OUTPUT). */
static inline int nnk_grad_needs_output(int act) { return act == NNK_SIGMOID || act == NNK_TANH; }

#define NNK_SQRT1_2 0.70710678118654752440
#define NNK_SQRT_2_OVER_PI 0.79788456080286535588
#define NNK_INV_SQRT_2PI 0.39894228040143267794
#define NNK_GELU_TANH_C 0.044715

/* NNK_ACT_DEFINE(T, suffix, EXP, TANH, ERF) defines, for element type T:
 *   nnk_act_<suffix>(act, x, slope)                       act(x)
 *   nnk_act_local_grad_<suffix>(act, x, y, slope)         d act / dx from x or y
 *   nnk_act_block_<suffix>(act, slope, x, ldx, y, ldy, rows, cols)          y = act(x)
 *   nnk_act_grad_block_<suffix>(act, slope, x, ldx, y, ldy, g, ldg, out, ldo, rows, cols)
 *                                                         out = g * act'(x or y)
 * x may alias y, and g may alias out (in-place use by the GEMM epilogue). */
#define NNK_ACT_DEFINE(T, S, ABS, EXP, TANH, ERF, SIGMOID_ROW)                                 \
static inline T nnk_sigmoid_##S(T x) {                                                         \
    /* from exp(-|x|), so that no exp overflows */                                             \
    T e = EXP(-ABS(x));                                                                        \
    return x >= 0 ? (T)1 / ((T)1 + e) : e / ((T)1 + e);                                        \
}                                                                                              \
static inline T nnk_gelu_##S(T x) {                                                            \
    return (T)0.5 * x * ((T)1 + ERF(x * (T)NNK_SQRT1_2));                                      \
}                                                                                              \
static inline T nnk_gelu_tanh_##S(T x) {                                                       \
    T inner = (T)NNK_SQRT_2_OVER_PI * (x + (T)NNK_GELU_TANH_C * x * x * x);                    \
    return (T)0.5 * x * ((T)1 + TANH(inner));                                                  \
}                                                                                              \
static inline T nnk_act_##S(int act, T x, T slope) {                                           \
    switch (act) {                                                                             \
    case NNK_SIGMOID: return nnk_sigmoid_##S(x);                                               \
    case NNK_TANH: return TANH(x);                                                             \
    case NNK_RELU: return x < 0 ? (T)0 : x;                                                    \
    case NNK_LEAKY_RELU: return x > 0 ? x : slope * x;                                         \
    case NNK_GELU: return nnk_gelu_##S(x);                                                     \
    case NNK_GELU_TANH: return nnk_gelu_tanh_##S(x);                                           \
    case NNK_STEP: return x > 0 ? (T)1 : (T)0;                                                 \
    default: return x;                                                                         \
    }                                                                                          \
}                                                                                              \
static inline T nnk_act_local_grad_##S(int act, T x, T y, T slope) {                           \
    switch (act) {                                                                             \
    case NNK_SIGMOID: return y * ((T)1 - y);                                                   \
    case NNK_TANH: return (T)1 - y * y;                                                        \
    case NNK_RELU: return x > 0 ? (T)1 : (T)0; /* the gradient at 0 is taken as 0 */          \
    case NNK_LEAKY_RELU: return x > 0 ? (T)1 : slope;                                          \
    case NNK_GELU: {                                                                           \
        T cdf = (T)0.5 * ((T)1 + ERF(x * (T)NNK_SQRT1_2));                                     \
        T pdf = EXP((T)-0.5 * x * x) * (T)NNK_INV_SQRT_2PI;                                    \
        return cdf + x * pdf;                                                                  \
    }                                                                                          \
    case NNK_GELU_TANH: {                                                                      \
        T t = TANH((T)NNK_SQRT_2_OVER_PI * (x + (T)NNK_GELU_TANH_C * x * x * x));              \
        return (T)0.5 * ((T)1 + t) + (T)0.5 * x * ((T)1 - t * t) * (T)NNK_SQRT_2_OVER_PI       \
               * ((T)1 + (T)(3.0 * NNK_GELU_TANH_C) * x * x);                                  \
    }                                                                                          \
    case NNK_STEP: return (T)0;                                                                \
    default: return (T)1;                                                                      \
    }                                                                                          \
}                                                                                              \
NNK_MULTIVERSION static void nnk_act_block_##S(int act, T slope, const T *x, ptrdiff_t ldx, T *y,               \
                              ptrdiff_t ldy, ptrdiff_t rows, ptrdiff_t cols) {                 \
    for (ptrdiff_t i = 0; i < rows; i++) {                                                     \
        const T *xr = x + i * ldx;                                                             \
        T *yr = y + i * ldy;                                                                   \
        switch (act) {                                                                         \
        case NNK_IDENTITY:                                                                     \
            for (ptrdiff_t j = 0; j < cols; j++) yr[j] = xr[j];                                \
            break;                                                                             \
        case NNK_RELU:                                                                         \
            for (ptrdiff_t j = 0; j < cols; j++) yr[j] = xr[j] < 0 ? (T)0 : xr[j];             \
            break;                                                                             \
        case NNK_LEAKY_RELU:                                                                   \
            for (ptrdiff_t j = 0; j < cols; j++) yr[j] = xr[j] > 0 ? xr[j] : slope * xr[j];    \
            break;                                                                             \
        case NNK_STEP:                                                                         \
            for (ptrdiff_t j = 0; j < cols; j++) yr[j] = xr[j] > 0 ? (T)1 : (T)0;              \
            break;                                                                             \
        case NNK_TANH:                                                                         \
            for (ptrdiff_t j = 0; j < cols; j++) yr[j] = TANH(xr[j]);                          \
            break;                                                                             \
        case NNK_SIGMOID:                                                                      \
            SIGMOID_ROW(xr, yr, cols);                                                         \
            break;                                                                             \
        case NNK_GELU:                                                                         \
            for (ptrdiff_t j = 0; j < cols; j++) yr[j] = nnk_gelu_##S(xr[j]);                  \
            break;                                                                             \
        default:                                                                               \
            for (ptrdiff_t j = 0; j < cols; j++) yr[j] = nnk_act_##S(act, xr[j], slope);       \
        }                                                                                      \
    }                                                                                          \
}                                                                                              \
NNK_MULTIVERSION static void nnk_act_grad_block_##S(int act, T slope, const T *x, ptrdiff_t ldx, const T *y,    \
                                   ptrdiff_t ldy, const T *g, ptrdiff_t ldg, T *out,           \
                                   ptrdiff_t ldo, ptrdiff_t rows, ptrdiff_t cols) {            \
    for (ptrdiff_t i = 0; i < rows; i++) {                                                     \
        const T *gr = g + i * ldg;                                                             \
        T *orow = out + i * ldo;                                                               \
        const T *xr = x ? x + i * ldx : NULL;                                                  \
        const T *yr = y ? y + i * ldy : NULL;                                                  \
        switch (act) {                                                                         \
        case NNK_IDENTITY:                                                                     \
            for (ptrdiff_t j = 0; j < cols; j++) orow[j] = gr[j];                              \
            break;                                                                             \
        case NNK_STEP:                                                                         \
            for (ptrdiff_t j = 0; j < cols; j++) orow[j] = gr[j] * (T)0;                       \
            break;                                                                             \
        case NNK_RELU:                                                                         \
            for (ptrdiff_t j = 0; j < cols; j++) orow[j] = xr[j] > 0 ? gr[j] : (T)0;           \
            break;                                                                             \
        case NNK_LEAKY_RELU:                                                                   \
            for (ptrdiff_t j = 0; j < cols; j++) orow[j] = xr[j] > 0 ? gr[j] : slope * gr[j];  \
            break;                                                                             \
        case NNK_SIGMOID:                                                                      \
            for (ptrdiff_t j = 0; j < cols; j++) orow[j] = gr[j] * (yr[j] * ((T)1 - yr[j]));   \
            break;                                                                             \
        case NNK_TANH:                                                                         \
            for (ptrdiff_t j = 0; j < cols; j++) orow[j] = gr[j] * ((T)1 - yr[j] * yr[j]);     \
            break;                                                                             \
        default:                                                                               \
            for (ptrdiff_t j = 0; j < cols; j++)                                               \
                orow[j] = gr[j] * nnk_act_local_grad_##S(act, xr[j], (T)0, slope);             \
        }                                                                                      \
    }                                                                                          \
}

/* exp(x) for x <= 0 in float, in operations a loop vectorises (libm's expf is a call per
 * element, ~6 ns: a sigmoid over a 100 x 100 batch cost ~60 us): Cephes' expf, x = n ln2 + r
 * with |r| <= ln2 / 2, a degree-7 polynomial for exp(r) (relative error < 2e-7, about one
 * float ulp), times 2^n built in the exponent bits. Below -87.34 (where exp leaves the normal
 * floats) it returns 0. */
static inline float nnk_exp_nonpositive_s(float x) {
    int underflow = x < -87.33654f; /* ln of the smallest normal float, 2^-126 */
    x = underflow ? -87.33654f : x;
    /* n = x / ln2 rounded to an integer: adding then subtracting 1.5 * 2^23 rounds */
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693359375f - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)(n == n ? n : 0.0f) + 127) << 23; /* NaN: p is NaN already; no NaN cast */
    float scale;
    __builtin_memcpy(&scale, &bits, sizeof scale);
    float value = p * scale; /* computed either way: a select, not a branch, vectorises */
    return underflow ? 0.0f : value;
}

/* y[0:n] = sigmoid(x[0:n]) in float, vectorised (see nnk_exp_nonpositive_s; GCC needs
 * -fno-trapping-math to turn its selects into blends). */
static inline void nnk_sigmoid_row_s(const float *x, float *y, ptrdiff_t n) {
    for (ptrdiff_t j = 0; j < n; j++) {
        float e = nnk_exp_nonpositive_s(-fabsf(x[j]));
        float r = 1.0f / (1.0f + e), negative = e * r;
        y[j] = x[j] >= 0 ? r : negative;
    }
}

/* Double keeps libm's exp (its tolerance is tight; the networks people time use float). */
static inline void nnk_sigmoid_row_d(const double *x, double *y, ptrdiff_t n);

NNK_ACT_DEFINE(float, s, fabsf, expf, tanhf, erff, nnk_sigmoid_row_s)
NNK_ACT_DEFINE(double, d, fabs, exp, tanh, erf, nnk_sigmoid_row_d)

static inline void nnk_sigmoid_row_d(const double *x, double *y, ptrdiff_t n) {
    for (ptrdiff_t j = 0; j < n; j++) y[j] = nnk_sigmoid_d(x[j]);
}

#endif /* NNK_ACT_H */
