/* The first layer of a network whose input is mostly zeros (MNIST: 19% of pixels are not
 * zero), for one element type and instruction set; included by nnk_gemm_isa.h after
 * nnk_gemm_impl.h, with the same macros defined. Not a public header.
 *
 * A dense product spends most of its multiply-adds on zeros there. These kernels list each
 * input row's nonzero columns once per batch and then touch only those:
 *   forward      out[i, :] = act(b + sum over nonzero x[i, k] of x[i, k] * W[k, :])
 *   weight grad  dW[k, :]  = sum over rows i with x[i, k] != 0 of x[i, k] * delta[i, :]
 * Each sum runs in the order of the dense product with the zero terms left out, so the
 * results equal the dense path's to round-off while W and the gradients are finite (a
 * dense product's 0 * inf = NaN terms are among those left out). The row being summed lives in registers (up
 * to CHUNK whole vectors and a partial one at a time); each nonzero costs one broadcast and one multiply-add per
 * vector, against the dense product's n / VLEN multiply-adds for every element.
 *
 * Index lists have a fixed stride, so threads fill them without counting first:
 *   row lists     cols[i * k + 0 .. row_count[i]]   the nonzero columns of row i, ascending
 *   row splits    splits[i * (chunks + 1) + s]      where row i's list reaches column s * chunk
 *                                                   (s = chunks: row_count[i])
 *   column lists  rows_of[c * m + 0 .. col_count[c]] the rows whose column c is nonzero
 * The splits let each chunk of columns get its column lists (nnk_sparse_index_columns, in
 * nnk_gemm.h) from the row lists without a search, on whichever thread takes that chunk.
 */

#define NNK_FN(name) NNK_PASTE(name, NNK_S)
#define T NNK_T
#define VEC NNK_FN(nnk_vec)
#define VLEN ((ptrdiff_t)(NNK_VEC_BYTES / sizeof(T)))
#define EPILOGUE NNK_PASTE(nnk_epilogue, NNK_TS)
#define ACT_BLOCK NNK_PASTE(nnk_act_block, NNK_TS)
/* What a blocked loop keeps in L1 at once (the per-core L1 data cache is 32 KiB). */
#ifndef NNK_SPARSE_L1_BYTES
#define NNK_SPARSE_L1_BYTES (16 * 1024)
#endif

/* Whole accumulator vectors per pass over a row's nonzeros (CHUNK), and a pass function for
 * every width up to it: 12 of the 16 AVX2 registers, 13 with a partial vector, the rest
 * hold the broadcast; AVX-512 has 32. */
#define NNK_SPARSE_WIDTHS_12(X) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12)
#if NNK_VEC_BYTES == 64
#define CHUNK 24
#define NNK_SPARSE_WIDTHS(X) NNK_SPARSE_WIDTHS_12(X) X(13) X(14) X(15) X(16) X(17) X(18) X(19) X(20) X(21) X(22) X(23) X(24)
#else
#define CHUNK 12
#define NNK_SPARSE_WIDTHS(X) NNK_SPARSE_WIDTHS_12(X)
#endif

/* Bit l set when element l of the VLEN at p is not zero (NaN is not zero): one compare
 * into a mask where the instruction set has it. */
static inline uint64_t NNK_FN(nnk_nonzero_lanes)(const T *p) {
#if defined(__x86_64__) && NNK_VEC_BYTES == 64
    return sizeof(T) == 4 ? _mm512_cmp_ps_mask(_mm512_loadu_ps((const float *)p), _mm512_setzero_ps(), _CMP_NEQ_UQ)
                          : _mm512_cmp_pd_mask(_mm512_loadu_pd((const double *)p), _mm512_setzero_pd(), _CMP_NEQ_UQ);
#elif defined(__x86_64__) && NNK_VEC_BYTES == 32
    return sizeof(T) == 4
               ? _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps((const float *)p), _mm256_setzero_ps(), _CMP_NEQ_UQ))
               : _mm256_movemask_pd(_mm256_cmp_pd(_mm256_loadu_pd((const double *)p), _mm256_setzero_pd(), _CMP_NEQ_UQ));
#elif defined(__x86_64__)
    return sizeof(T) == 4 ? _mm_movemask_ps(_mm_cmpneq_ps(_mm_loadu_ps((const float *)p), _mm_setzero_ps()))
                          : _mm_movemask_pd(_mm_cmpneq_pd(_mm_loadu_pd((const double *)p), _mm_setzero_pd()));
#else
    uint64_t mask = 0;
    for (ptrdiff_t l = 0; l < VLEN; l++) mask |= (uint64_t)(p[l] != 0) << l;
    return mask;
#endif
}

/* The nonzero columns of rows [r0, r1) of x (row stride ldx, k columns) into the row
 * lists, and the row splits at every `chunk` columns (a multiple of VLEN). A vector of zeros
 * costs one compare. */
static void NNK_FN(nnk_sparse_index_rows)(const T *x, ptrdiff_t ldx, ptrdiff_t k, ptrdiff_t r0, ptrdiff_t r1,
                                          int32_t *cols, int32_t *row_count, ptrdiff_t chunk, int32_t *splits) {
    const ptrdiff_t chunks = nnk_ceil_div(k, chunk);
    for (ptrdiff_t i = r0; i < r1; i++) {
        const T *row = x + i * ldx;
        int32_t *out = cols + i * k, *split = splits + i * (chunks + 1);
        ptrdiff_t n = 0, j = 0;
        for (; j + VLEN <= k; j += VLEN) {
            if (j % chunk == 0) split[j / chunk] = (int32_t)n;
            uint64_t mask = NNK_FN(nnk_nonzero_lanes)(row + j);
            if (!mask) continue;
#pragma GCC unroll 16
            for (int l = 0; l < VLEN; l++) { /* no branch per element */
                out[n] = (int32_t)(j + l);
                n += (mask >> l) & 1;
            }
        }
        for (; j < k; j++) {
            if (j % chunk == 0) split[j / chunk] = (int32_t)n;
            out[n] = (int32_t)j;
            n += row[j] != 0;
        }
        split[chunks] = row_count[i] = (int32_t)n;
    }
}

/* One pass over a list of entries: out[0 : VECTORS * VLEN + tail] = start (NULL: 0) + sum
 * over e < count of a_e * src_e, with a_e = scale[offset[e] * ld_scale] and src_e the row
 * base + offset[e] * ld_src. The sum stays in registers, so the width is a compile-time
 * constant (a function per width, each alone so that nothing competes for the registers).
 * TAIL: one more vector, of which the first `tail` lanes are kept; its loads run past the
 * end of each row src_e into the next, so the entries from `safe` on (rows at the very end
 * of base, where that would leave the array; the list ascends) add their tail lanes one
 * element at a time. */
#define NNK_SPARSE_PASS_DEFINE(VECTORS, TAIL)                                                   \
    __attribute__((noinline)) static void NNK_FN(nnk_sparse_pass_##VECTORS##_##TAIL)(          \
        ptrdiff_t tail, ptrdiff_t count, ptrdiff_t safe, const int32_t *restrict offset,        \
        const T *restrict scale, ptrdiff_t ld_scale, const T *restrict base, ptrdiff_t ld_src,  \
        const T *restrict start, T *restrict out) {                                             \
        VEC acc[VECTORS + 1];                                                                   \
        T lanes[VLEN] __attribute__((aligned(64)));                                             \
        _Pragma("GCC unroll 32") for (ptrdiff_t v = 0; v < VECTORS; v++)                        \
            acc[v] = start ? NNK_FN(nnk_loadu)(start + v * VLEN) : (VEC){0};                    \
        if (TAIL) { /* not one masked load: with start NULL, AMD cores take a slow assist */    \
            for (ptrdiff_t j = 0; j < VLEN; j++) lanes[j] = 0;                                  \
            if (start)                                                                          \
                for (ptrdiff_t j = 0; j < tail; j++) lanes[j] = start[VECTORS * VLEN + j];      \
            acc[VECTORS] = *(VEC *)lanes;                                                       \
        }                                                                                       \
        ptrdiff_t e = 0;                                                                        \
        for (; e < (TAIL ? safe : count); e++) {                                                \
            ptrdiff_t o = offset[e];                                                            \
            T a = scale[o * ld_scale];                                                          \
            const T *src = base + o * ld_src;                                                   \
            _Pragma("GCC unroll 32") for (ptrdiff_t v = 0; v < VECTORS + TAIL; v++)             \
                acc[v] += a * NNK_FN(nnk_loadu)(src + v * VLEN);                                \
        }                                                                                       \
        if (TAIL) *(VEC *)lanes = acc[VECTORS];                                                 \
        for (; e < count; e++) {                                                                \
            ptrdiff_t o = offset[e];                                                            \
            T a = scale[o * ld_scale];                                                          \
            const T *src = base + o * ld_src;                                                   \
            _Pragma("GCC unroll 32") for (ptrdiff_t v = 0; v < VECTORS; v++)                    \
                acc[v] += a * NNK_FN(nnk_loadu)(src + v * VLEN);                                \
            for (ptrdiff_t j = 0; j < tail; j++) lanes[j] += a * src[VECTORS * VLEN + j];       \
        }                                                                                       \
        _Pragma("GCC unroll 32") for (ptrdiff_t v = 0; v < VECTORS; v++)                        \
            NNK_FN(nnk_storeu)(out + v * VLEN, acc[v]);                                         \
        for (ptrdiff_t j = 0; j < tail; j++) out[VECTORS * VLEN + j] = lanes[j];                \
    }
#define NNK_SPARSE_PASS_PAIR(VECTORS) NNK_SPARSE_PASS_DEFINE(VECTORS, 0) NNK_SPARSE_PASS_DEFINE(VECTORS, 1)
#define NNK_SPARSE_PASS_ENTRY(VECTORS) {NNK_FN(nnk_sparse_pass_##VECTORS##_0), NNK_FN(nnk_sparse_pass_##VECTORS##_1)},
NNK_SPARSE_PASS_DEFINE(0, 1)
NNK_SPARSE_WIDTHS(NNK_SPARSE_PASS_PAIR)
/* [vectors][has a tail] -> the pass of that width ([0][0]: nothing to do, never called) */
static void (*const NNK_FN(nnk_sparse_passes)[CHUNK + 1][2])(ptrdiff_t, ptrdiff_t, ptrdiff_t, const int32_t *,
                                                              const T *, ptrdiff_t, const T *, ptrdiff_t,
                                                              const T *, T *) = {
    {NULL, NNK_FN(nnk_sparse_pass_0_1)}, NNK_SPARSE_WIDTHS(NNK_SPARSE_PASS_ENTRY)};
#undef NNK_SPARSE_PASS_DEFINE
#undef NNK_SPARSE_PASS_PAIR
#undef NNK_SPARSE_PASS_ENTRY

/* out[0:n] = start[0:n] (start NULL: 0) + sum over e < count of a_e * src_e[0:n] (see
 * above), in passes of at most CHUNK vectors over the entries; the last n % VLEN columns
 * join the last pass. base holds src_elements readable elements. */
static void NNK_FN(nnk_sparse_combine)(ptrdiff_t n, ptrdiff_t count, const int32_t *offset,
                                       const T *scale, ptrdiff_t ld_scale, const T *base, ptrdiff_t ld_src,
                                       ptrdiff_t src_elements, const T *start, T *out) {
    ptrdiff_t vectors = n / VLEN, tail = n % VLEN, j0 = 0;
    for (; vectors > CHUNK; vectors -= CHUNK, j0 += CHUNK * VLEN)
        NNK_FN(nnk_sparse_passes)[CHUNK][0](0, count, count, offset, scale, ld_scale, base + j0, ld_src,
                                           start ? start + j0 : NULL, out + j0);
    if (vectors == 0 && tail == 0) return;
    ptrdiff_t safe = count, tail_at = j0 + vectors * VLEN;
    while (tail && safe > 0 && offset[safe - 1] * ld_src + tail_at + VLEN > src_elements) safe--;
    NNK_FN(nnk_sparse_passes)[vectors][tail != 0](tail, count, safe, offset, scale, ld_scale, base + j0, ld_src,
                                                  start ? start + j0 : NULL, out + j0);
}

/* Rows [r0, r1) of out (row stride ldo) = act(x @ w + bias), from the row lists of x:
 * x is m x k (row stride ldx), w is k x n (row stride ldw); bias may be NULL. */
static void NNK_FN(nnk_sparse_linear)(ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t n, ptrdiff_t k, const T *x,
                                      ptrdiff_t ldx, const int32_t *cols, const int32_t *row_count,
                                      const T *w, ptrdiff_t ldw, const T *bias, int act, T slope, T *out,
                                      ptrdiff_t ldo) {
    /* a window of columns at a time, all rows: a wide w's columns of one window stay in L2 */
    const ptrdiff_t window = CHUNK * VLEN;
    ptrdiff_t w_elements = (k - 1) * ldw + n;
    for (ptrdiff_t j0 = 0, width; j0 < n; j0 += width) {
        width = n - j0 < window + VLEN ? n - j0 : window; /* the last window takes the tail */
        for (ptrdiff_t i = r0; i < r1; i++)
            NNK_FN(nnk_sparse_combine)(width, row_count[i], cols + i * k, x + i * ldx, 1, w + j0, ldw,
                                       w_elements - j0, bias ? bias + j0 : NULL, out + i * ldo + j0);
    }
    if (act != NNK_IDENTITY && r1 > r0) ACT_BLOCK(act, slope, out + r0 * ldo, ldo, out + r0 * ldo, ldo, r1 - r0, n);
}

/* Rows [c0, c1) of gw (row stride ldg) = x.T @ delta, from the column lists of x (m x k,
 * row stride ldx); delta is m x n (row stride ld_delta). ep->block_done, when set, gets
 * each finished block of rows. */
static void NNK_FN(nnk_sparse_weight_grad)(ptrdiff_t c0, ptrdiff_t c1, ptrdiff_t m, ptrdiff_t n, const T *x,
                                           ptrdiff_t ldx, const int32_t *rows_of, const int32_t *col_count,
                                           const T *delta, ptrdiff_t ld_delta, T *gw, ptrdiff_t ldg,
                                           const EPILOGUE *ep) {
    ptrdiff_t delta_elements = (m - 1) * ld_delta + n;
    /* blocks the update that follows finds in L1 */
    ptrdiff_t block = nnk_max(1, NNK_SPARSE_L1_BYTES / (ptrdiff_t)sizeof(T) / nnk_max(n, 1));
    for (ptrdiff_t b0 = c0; b0 < c1; b0 += block) {
        ptrdiff_t b1 = nnk_min(c1, b0 + block);
        for (ptrdiff_t c = b0; c < b1; c++)
            NNK_FN(nnk_sparse_combine)(n, col_count[c], rows_of + c * m, x + c, ldx, delta, ld_delta,
                                       delta_elements, NULL, gw + c * ldg);
        if (ep && ep->block_done) ep->block_done(ep->block_context, gw + b0 * ldg, ldg, b1 - b0, n);
    }
}

#undef NNK_FN
#undef T
#undef VEC
#undef VLEN
#undef EPILOGUE
#undef ACT_BLOCK
#undef CHUNK
#undef NNK_SPARSE_WIDTHS_12
#undef NNK_SPARSE_WIDTHS
