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
#define NNK_ACT_DEFINE(T, S, ABS, EXP, TANH, ERF)                                              \
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
static void nnk_act_block_##S(int act, T slope, const T *x, ptrdiff_t ldx, T *y,               \
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
            for (ptrdiff_t j = 0; j < cols; j++) yr[j] = nnk_sigmoid_##S(xr[j]);               \
            break;                                                                             \
        case NNK_GELU:                                                                         \
            for (ptrdiff_t j = 0; j < cols; j++) yr[j] = nnk_gelu_##S(xr[j]);                  \
            break;                                                                             \
        default:                                                                               \
            for (ptrdiff_t j = 0; j < cols; j++) yr[j] = nnk_act_##S(act, xr[j], slope);       \
        }                                                                                      \
    }                                                                                          \
}                                                                                              \
static void nnk_act_grad_block_##S(int act, T slope, const T *x, ptrdiff_t ldx, const T *y,    \
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

NNK_ACT_DEFINE(float, s, fabsf, expf, tanhf, erff)
NNK_ACT_DEFINE(double, d, fabs, exp, tanh, erf)

#endif /* NNK_ACT_H */
