/* The GEMM for one element type and instruction set; included by nnk_gemm_isa.h with
 * NNK_T (the type), NNK_TS (its suffix, s or d), NNK_S (the name suffix: type and
 * instruction set), NNK_VEC_BYTES, NNK_MR, NNK_NR and NNK_KC_TARGET defined. Not a
 * public header. */

#define NNK_FN(name) NNK_PASTE(name, NNK_S)
#define T NNK_T
#define VEC NNK_FN(nnk_vec)
#define VLEN ((ptrdiff_t)(NNK_VEC_BYTES / sizeof(T)))
#define NV (NNK_NR / VLEN)
#define MR NNK_MR
#define NR NNK_NR

typedef T VEC __attribute__((vector_size(NNK_VEC_BYTES)));

#define EPILOGUE NNK_PASTE(nnk_epilogue, NNK_TS)
#define ACT_BLOCK NNK_PASTE(nnk_act_block, NNK_TS)
#define ACT_GRAD_BLOCK NNK_PASTE(nnk_act_grad_block, NNK_TS)

static inline VEC NNK_FN(nnk_loadu)(const T *p) {
    VEC v;
    __builtin_memcpy(&v, p, sizeof v);
    return v;
}

static inline void NNK_FN(nnk_storeu)(T *p, VEC v) { __builtin_memcpy(p, &v, sizeof v); }

/* c[0:mr, 0:nr] (+)= a_panel @ b_panel (+ bias), nr <= nvec * VLEN: the MR x (nvec vectors)
 * tile lives in registers for the whole K loop. a: kc columns of MR values; b: kc rows of
 * NR values (64-byte aligned), of which the first nvec vectors are read. Inlined with nvec
 * a constant: NV for a whole panel, 1 for a last panel of at most one vector's columns. */
static inline __attribute__((always_inline)) void NNK_FN(nnk_tile_kernel)(
    ptrdiff_t kc, const T *restrict a, const T *restrict b, T *restrict c, ptrdiff_t ldc, ptrdiff_t mr,
    ptrdiff_t nr, int accumulate, const T *restrict bias, const int nvec) {
    VEC acc[MR][NV];
#pragma GCC unroll 16
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
        for (int v = 0; v < nvec; v++) acc[i][v] = (VEC){0};

    for (ptrdiff_t p = 0; p < kc; p++) {
        VEC bv[NV];
#pragma GCC unroll 4
        for (int v = 0; v < nvec; v++) bv[v] = *(const VEC *)(b + v * VLEN);
#pragma GCC unroll 16
        for (int i = 0; i < MR; i++) {
            T ai = a[i];
#pragma GCC unroll 4
            for (int v = 0; v < nvec; v++) acc[i][v] += ai * bv[v];
        }
        a += MR;
        b += NR;
    }

    if (mr == MR && nr == nvec * VLEN) {
#pragma GCC unroll 16
        for (int i = 0; i < MR; i++) {
            T *crow = c + i * ldc;
#pragma GCC unroll 4
            for (int v = 0; v < nvec; v++) {
                VEC r = acc[i][v];
                if (accumulate) r += NNK_FN(nnk_loadu)(crow + v * VLEN);
                if (bias) r += NNK_FN(nnk_loadu)(bias + v * VLEN);
                NNK_FN(nnk_storeu)(crow + v * VLEN, r);
            }
        }
    } else {
        T tile[MR * NR] __attribute__((aligned(64)));
#pragma GCC unroll 16
        for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
            for (int v = 0; v < nvec; v++) *(VEC *)(tile + i * NR + v * VLEN) = acc[i][v];
        for (ptrdiff_t i = 0; i < mr; i++) {
            T *crow = c + i * ldc;
            for (ptrdiff_t j = 0; j < nr; j++) {
                T r = tile[i * NR + j];
                if (accumulate) r += crow[j];
                if (bias) r += bias[j];
                crow[j] = r;
            }
        }
    }
}

/* The micro-kernel: c[0:mr, 0:nr] (+)= a_panel @ b_panel (+ bias), with half the
 * multiply-adds when nr fits one vector (the last panel of n = 100 or n = 10, say). */
static inline void NNK_FN(nnk_micro_kernel)(ptrdiff_t kc, const T *restrict a, const T *restrict b,
                                           T *restrict c, ptrdiff_t ldc, ptrdiff_t mr, ptrdiff_t nr,
                                           int accumulate, const T *restrict bias) {
    if (NV > 1 && nr <= VLEN)
        NNK_FN(nnk_tile_kernel)(kc, a, b, c, ldc, mr, nr, accumulate, bias, 1);
    else
        NNK_FN(nnk_tile_kernel)(kc, a, b, c, ldc, mr, nr, accumulate, bias, NV);
}

/* Pack the mc x kc block A(i, p) = a[i * rs + p * cs] into MR-row panels: panel after
 * panel, each kc columns of MR values, rows past mc zero. */
static void NNK_FN(nnk_pack_a)(ptrdiff_t mc, ptrdiff_t kc, const T *a, ptrdiff_t rs, ptrdiff_t cs,
                               T *restrict dst) {
    for (ptrdiff_t ir = 0; ir < mc; ir += MR) {
        ptrdiff_t mr = nnk_min(MR, mc - ir);
        const T *ap = a + ir * rs;
        if (rs == 1 && mr == MR) { /* transposed A: each column of the panel is contiguous */
            for (ptrdiff_t p = 0; p < kc; p++)
#pragma GCC unroll 16
                for (int r = 0; r < MR; r++) dst[p * MR + r] = ap[p * cs + r];
        } else if (mr == MR) {
            for (ptrdiff_t p = 0; p < kc; p++)
#pragma GCC unroll 16
                for (int r = 0; r < MR; r++) dst[p * MR + r] = ap[r * rs + p * cs];
        } else {
            for (ptrdiff_t p = 0; p < kc; p++)
                for (ptrdiff_t r = 0; r < MR; r++) dst[p * MR + r] = r < mr ? ap[r * rs + p * cs] : (T)0;
        }
        dst += kc * MR;
    }
}

#if NNK_NR == 16 && defined(__has_builtin)
#if __has_builtin(__builtin_shufflevector)
#define NNK_HAS_TRANSPOSE8 1
/* Transpose 8 vectors of 8 in place: the unpack / shuffle / lane-permute sequence of AVX
 * (each step one instruction on AVX2 floats). */
static inline void NNK_FN(nnk_transpose8)(VEC r[8]) {
    VEC t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = __builtin_shufflevector(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
        t[i + 1] = __builtin_shufflevector(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
    }
    for (int i = 0; i < 8; i += 4) {
        u[i] = __builtin_shufflevector(t[i], t[i + 2], 0, 1, 8, 9, 4, 5, 12, 13);
        u[i + 1] = __builtin_shufflevector(t[i], t[i + 2], 2, 3, 10, 11, 6, 7, 14, 15);
        u[i + 2] = __builtin_shufflevector(t[i + 1], t[i + 3], 0, 1, 8, 9, 4, 5, 12, 13);
        u[i + 3] = __builtin_shufflevector(t[i + 1], t[i + 3], 2, 3, 10, 11, 6, 7, 14, 15);
    }
    for (int i = 0; i < 4; i++) {
        r[i] = __builtin_shufflevector(u[i], u[i + 4], 0, 1, 2, 3, 8, 9, 10, 11);
        r[i + 4] = __builtin_shufflevector(u[i], u[i + 4], 4, 5, 6, 7, 12, 13, 14, 15);
    }
}
#endif
#endif

/* Pack the k x n matrix B(p, j) = b[p * rs + j * cs] into NR-column panels over all of K:
 * panel after panel, each k rows of NR values, columns past n zero. Panels
 * [first_panel, end_panel) only, at their place in dst. */
static void NNK_FN(nnk_pack_b_panels)(ptrdiff_t k, ptrdiff_t n, const T *b, ptrdiff_t rs, ptrdiff_t cs,
                                      T *restrict dst, ptrdiff_t first_panel, ptrdiff_t end_panel) {
    if (cs == 1) { /* B not transposed: read it row after row, writing one row of each panel */
        ptrdiff_t full_end = nnk_min(end_panel, n / NR), edge = n - full_end * NR;
        for (ptrdiff_t p = 0; p < k; p++) {
            const T *brow = b + p * rs;
            for (ptrdiff_t panel = first_panel; panel < full_end; panel++)
#pragma GCC unroll 4
                for (ptrdiff_t v = 0; v < NV; v++)
                    *(VEC *)(dst + panel * k * NR + p * NR + v * VLEN) =
                        NNK_FN(nnk_loadu)(brow + panel * NR + v * VLEN);
            if (full_end < end_panel) /* the last, partial panel */
                for (ptrdiff_t j = 0; j < NR; j++)
                    dst[full_end * k * NR + p * NR + j] = j < edge ? brow[full_end * NR + j] : (T)0;
        }
        return;
    }
    for (ptrdiff_t panel = first_panel; panel < end_panel; panel++) {
        /* transposed B: read each column of the panel along its contiguous row */
        ptrdiff_t j0 = panel * NR, nr = nnk_min(NR, n - j0);
        const T *bp = b + j0 * cs;
        T *out = dst + panel * k * NR;
        if (nr == NR) {
            ptrdiff_t p = 0;
#if NNK_HAS_TRANSPOSE8
            if (rs == 1) /* 8 x 8 blocks transposed in registers */
                for (; p + VLEN <= k; p += VLEN)
#pragma GCC unroll 4
                    for (ptrdiff_t v = 0; v < NV; v++) {
                        VEC rows[VLEN];
#pragma GCC unroll 8
                        for (int q = 0; q < VLEN; q++) rows[q] = NNK_FN(nnk_loadu)(bp + (v * VLEN + q) * cs + p);
                        NNK_FN(nnk_transpose8)(rows);
#pragma GCC unroll 8
                        for (int q = 0; q < VLEN; q++) *(VEC *)(out + (p + q) * NR + v * VLEN) = rows[q];
                    }
#endif
            for (; p < k; p++)
#pragma GCC unroll 32
                for (ptrdiff_t j = 0; j < NR; j++) out[p * NR + j] = bp[j * cs + p * rs];
        } else {
            for (ptrdiff_t p = 0; p < k; p++)
                for (ptrdiff_t j = 0; j < NR; j++) out[p * NR + j] = j < nr ? bp[j * cs + p * rs] : (T)0;
        }
    }
}

/* Apply the activation part of the epilogue to the tile c[0:mr, 0:nr] at (row, col) of C. */
static inline void NNK_FN(nnk_tile_epilogue)(const EPILOGUE *ep, T *c, ptrdiff_t ldc, ptrdiff_t row,
                                             ptrdiff_t col, ptrdiff_t mr, ptrdiff_t nr) {
    if (ep->grad_src) {
        const T *src = ep->grad_src + row * ep->ld_grad_src + col;
        int from_y = nnk_grad_needs_output(ep->act);
        ACT_GRAD_BLOCK(ep->act, ep->slope, from_y ? NULL : src, ep->ld_grad_src,
                                   from_y ? src : NULL, ep->ld_grad_src, c, ldc, c, ldc, mr, nr);
    } else if (ep->act != NNK_IDENTITY) {
        ACT_BLOCK(ep->act, ep->slope, c, ldc, c, ldc, mr, nr);
    }
}

typedef struct {
    ptrdiff_t kc, mc, nc;
} NNK_FN(nnk_blocking);
#define BLOCKING NNK_FN(nnk_blocking)

/* Block sizes for one thread's m x n x k slice. */
static BLOCKING NNK_FN(nnk_choose_blocking)(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k) {
    BLOCKING blk;
    blk.kc = nnk_balanced_block(k, NNK_KC_TARGET, 8);
    if (blk.kc > k) blk.kc = k;
    ptrdiff_t mc_max = NNK_L2_BUDGET / (blk.kc * (ptrdiff_t)sizeof(T)) / MR * MR;
    if (mc_max < MR) mc_max = MR;
    blk.mc = m <= mc_max + mc_max / 4 ? nnk_round_up(m, MR) : nnk_balanced_block(m, mc_max, MR);
    ptrdiff_t nc_max = NNK_L3_BUDGET / (k * (ptrdiff_t)sizeof(T)) / NR * NR;
    if (nc_max < NR) nc_max = NR;
    blk.nc = n <= nc_max + nc_max / 4 ? nnk_round_up(n, NR) : nnk_balanced_block(n, nc_max, NR);
    return blk;
}

/* Pack rows [r0, r1) of op(A) (m x k) for all of K, as one M block: the K blocks of kc_blk
 * columns one after the other, block pc at dst + pc * round_up(m, MR), each in MR-row
 * panels. r0 is a multiple of MR, so threads can pack disjoint row ranges of one buffer. */
static void NNK_FN(nnk_pack_a_all_k)(int trans_a, ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t m, ptrdiff_t k,
                                     const T *a, ptrdiff_t lda, ptrdiff_t kc_blk, T *dst) {
    ptrdiff_t rs = trans_a ? 1 : lda, cs = trans_a ? lda : 1, m_pad = nnk_round_up(m, MR);
    for (ptrdiff_t pc = 0; r0 < r1 && pc < k; pc += kc_blk) {
        ptrdiff_t kc = nnk_min(kc_blk, k - pc);
        NNK_FN(nnk_pack_a)(r1 - r0, kc, a + r0 * rs + pc * cs, rs, cs, dst + pc * m_pad + r0 * kc);
    }
}

/* One thread's product: C[0:m, 0:n] = op(A)[0:m, :] @ op(B), epilogue offsets applied.
 * A is either packed already (a_packed, by nnk_pack_a_all_k: then m is one M block), or
 * packed block by block into a_buf. B is either packed already (b_packed: NR-column panels
 * over all of K covering the n columns), or packed one kc x NR sliver at a time into
 * sliver_buf right before the micro-kernels use it: with one M block each sliver serves
 * once, so packing it while it is about to be in L1 beats packing all of B first. */
static void NNK_FN(nnk_gemm_slice)(int trans_a, int trans_b, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k,
                                   const T *a, ptrdiff_t lda, const T *a_packed, const T *b,
                                   ptrdiff_t ldb, const T *b_packed, T *c, ptrdiff_t ldc,
                                   const EPILOGUE *ep, BLOCKING blk, T *a_buf, T *sliver_buf) {
    ptrdiff_t rs = trans_a ? 1 : lda, cs = trans_a ? lda : 1;
    ptrdiff_t b_rs = trans_b ? 1 : ldb, b_cs = trans_b ? ldb : 1;
    int has_tile_epilogue = ep && (ep->grad_src || ep->act != NNK_IDENTITY);
    for (ptrdiff_t pc = 0; pc < k; pc += blk.kc) {
        ptrdiff_t kc = nnk_min(blk.kc, k - pc);
        int first = pc == 0, last = pc + kc >= k;
        const T *bias = last && ep && !ep->grad_src ? ep->bias : NULL;
        for (ptrdiff_t ic = 0; ic < m; ic += blk.mc) {
            ptrdiff_t mc = nnk_min(blk.mc, m - ic);
            const T *ap = a_buf;
            if (a_packed)
                ap = a_packed + pc * nnk_round_up(m, MR);
            else
                NNK_FN(nnk_pack_a)(mc, kc, a + ic * rs + pc * cs, rs, cs, a_buf);
            for (ptrdiff_t jr = 0; jr < n; jr += NR) {
                ptrdiff_t nr = nnk_min(NR, n - jr);
                const T *bp = sliver_buf;
                if (b_packed)
                    bp = b_packed + jr * k + pc * NR; /* panel jr / NR, row pc */
                else
                    NNK_FN(nnk_pack_b_panels)(kc, nr, b + pc * b_rs + jr * b_cs, b_rs, b_cs, sliver_buf, 0, 1);
                for (ptrdiff_t ir = 0; ir < mc; ir += MR) {
                    ptrdiff_t mr = nnk_min(MR, mc - ir);
                    T *ct = c + (ic + ir) * ldc + jr;
                    NNK_FN(nnk_micro_kernel)(kc, ap + ir * kc, bp, ct, ldc, mr, nr, !first,
                                             bias ? bias + jr : NULL);
                    if (last && has_tile_epilogue)
                        NNK_FN(nnk_tile_epilogue)(ep, ct, ldc, ic + ir, jr, mr, nr);
                }
            }
            if (last && ep && ep->block_done) ep->block_done(ep->block_context, c + ic * ldc, ldc, mc, n);
        }
    }
}

/* How a product is split: over how many threads, along columns or rows, and whether the
 * threads pack A together into a shared buffer. Every thread computes the same plan. */
typedef struct {
    int threads, split_columns, share_a;
    BLOCKING whole;
} NNK_FN(nnk_gemm_plan);
#define PLAN NNK_FN(nnk_gemm_plan)

/* The plan for up to max_threads threads; products below min_mnk stay on one thread.
 * shared_bytes: the size of the buffer that threads packing A together would use. */
static PLAN NNK_FN(nnk_plan_gemm)(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, int max_threads, ptrdiff_t min_mnk,
                                  size_t shared_bytes) {
    PLAN plan;
    ptrdiff_t row_panels = nnk_ceil_div(m, MR), col_panels = nnk_ceil_div(n, NR);
    int nt = max_threads < 1 || m * n * k < min_mnk ? 1 : max_threads;
    /* tiles of the busiest thread, splitting columns or rows (ties: the larger dimension) */
    ptrdiff_t by_columns = nnk_ceil_div(col_panels, nt) * row_panels;
    ptrdiff_t by_rows = nnk_ceil_div(row_panels, nt) * col_panels;
    plan.split_columns = by_columns < by_rows || (by_columns == by_rows && m <= n);
    plan.threads = (int)nnk_min(nt, plan.split_columns ? col_panels : row_panels);
    if (plan.threads < 1) plan.threads = 1; /* an empty product */
    plan.whole = NNK_FN(nnk_choose_blocking)(m, nnk_ceil_div(n, plan.threads), k);
    plan.share_a = plan.threads > 1 && plan.split_columns && m <= plan.whole.mc &&
                   sizeof(T) * (size_t)(row_panels * MR * k) <= shared_bytes;
    return plan;
}

/* Bytes of the shared buffer in which a team packs an m x k operand A together. */
static inline size_t NNK_FN(nnk_team_shared_bytes)(ptrdiff_t m, ptrdiff_t k) {
    return sizeof(T) * (size_t)(nnk_round_up(m, MR) * k);
}

/* The slice of the epilogue that belongs to the C block at (row, col). */
static inline EPILOGUE NNK_FN(nnk_epilogue_at)(const EPILOGUE *ep, ptrdiff_t row, ptrdiff_t col) {
    EPILOGUE sub = *ep;
    if (sub.bias) sub.bias += col;
    if (sub.grad_src) sub.grad_src += row * sub.ld_grad_src + col;
    return sub;
}

/* Number of elements of B packed by nnk_pack_b for a k x n product operand. */
static inline size_t NNK_FN(nnk_packed_b_size)(ptrdiff_t k, ptrdiff_t n) {
    return (size_t)(k * nnk_round_up(n, NR));
}

/* Pack op(B) (k x n; B is n x k when trans_b) once, for nnk_gemm_packed_b calls that reuse
 * it (weights between two updates). dst holds nnk_packed_b_size(k, n) elements, 64-byte
 * aligned. */
static void NNK_FN(nnk_pack_b)(int trans_b, ptrdiff_t k, ptrdiff_t n, const T *b, ptrdiff_t ldb,
                               T *dst, int num_threads) {
    ptrdiff_t panels = nnk_ceil_div(n, NR);
    int nt = k * n < NNK_GEMM_PARALLEL_MIN_MNK / 4 ? 1 : (int)nnk_min(num_threads, panels);
    ptrdiff_t rs = trans_b ? 1 : ldb, cs = trans_b ? ldb : 1;
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        ptrdiff_t lo, hi;
        nnk_partition(panels, nnk_region_size(), nnk_thread_id(), &lo, &hi);
        NNK_FN(nnk_pack_b_panels)(k, n, b, rs, cs, dst, lo, hi);
    }
}

/* Thread `thread`'s share of C = op(A) @ op(B) with the epilogue, split by `plan`; B is
 * packed already when b_packed is not NULL. Every thread of the team calls it (threads
 * past plan->threads only join the barrier); team NULL: the team is the innermost OpenMP
 * parallel region, of exactly plan->threads threads. */
static int NNK_FN(nnk_gemm_share)(const PLAN *plan, int thread, nnk_team *team, T *a_shared,
                                  int trans_a, int trans_b, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k,
                                  const T *a, ptrdiff_t lda, const T *b, ptrdiff_t ldb,
                                  const T *b_packed, T *c, ptrdiff_t ldc, const EPILOGUE *ep) {
    int nt = plan->threads;
    ptrdiff_t a_rs = trans_a ? 1 : lda, b_cs = trans_b ? ldb : 1;
    ptrdiff_t row_panels = nnk_ceil_div(m, MR), col_panels = nnk_ceil_div(n, NR);
    ptrdiff_t lo, hi, i0 = 0, i1 = m, j0 = 0, j1 = n;
    if (plan->share_a) {
        if (thread < nt) {
            nnk_partition(row_panels, nt, thread, &lo, &hi);
            NNK_FN(nnk_pack_a_all_k)(trans_a, lo * MR, nnk_min(m, hi * MR), m, k, a, lda, plan->whole.kc,
                                     a_shared);
        }
        if (team) {
            nnk_team_barrier(team);
        } else {
#pragma omp barrier
        }
    }
    if (thread >= nt) return 0;
    if (plan->split_columns) {
        nnk_partition(col_panels, nt, thread, &lo, &hi);
        j0 = lo * NR;
        j1 = nnk_min(n, hi * NR);
    } else {
        nnk_partition(row_panels, nt, thread, &lo, &hi);
        i0 = lo * MR;
        i1 = nnk_min(m, hi * MR);
    }
    if (i0 >= i1 || j0 >= j1) return 0;
    BLOCKING blk = NNK_FN(nnk_choose_blocking)(i1 - i0, j1 - j0, k);
    int one_m_block = i1 - i0 <= blk.mc;
    /* B: read from b_packed, else one sliver at a time (one M block), else packed nc
     * columns at a time into b_buf and reused across the M blocks */
    size_t b_count = b_packed ? 0 : one_m_block ? (size_t)(blk.kc * NR) : (size_t)(k * blk.nc);
    T *a_buf = plan->share_a ? NULL : nnk_workspace(NNK_WS_A_BLOCK, sizeof(T) * blk.mc * blk.kc);
    T *b_buf = b_count ? nnk_workspace(NNK_WS_B, sizeof(T) * b_count) : NULL;
    if ((!plan->share_a && !a_buf) || (b_count && !b_buf)) return -1;
    ptrdiff_t nc_blk = b_packed || one_m_block ? j1 - j0 : blk.nc;
    for (ptrdiff_t jc = j0; jc < j1; jc += nc_blk) {
        ptrdiff_t nc = nnk_min(nc_blk, j1 - jc);
        const T *b_panels = b_packed ? b_packed + jc * k : one_m_block ? NULL : b_buf;
        if (b_panels == b_buf)
            NNK_FN(nnk_pack_b_panels)(k, nc, b + jc * b_cs, trans_b ? 1 : ldb, b_cs, b_buf, 0, nnk_ceil_div(nc, NR));
        EPILOGUE sub;
        if (ep) sub = NNK_FN(nnk_epilogue_at)(ep, i0, jc);
        NNK_FN(nnk_gemm_slice)(trans_a, trans_b, i1 - i0, nc, k, a + i0 * a_rs, lda,
                               plan->share_a ? a_shared : NULL, b + jc * b_cs, ldb, b_panels,
                               c + i0 * ldc + jc, ldc, ep ? &sub : NULL, blk, a_buf, b_buf);
    }
    return 0;
}

/* C = op(A) @ op(B) with the epilogue, in a parallel region of its own; B is packed
 * already when b_packed is not NULL. */
static int NNK_FN(nnk_gemm_run)(int trans_a, int trans_b, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k,
                                const T *a, ptrdiff_t lda, const T *b, ptrdiff_t ldb,
                                const T *b_packed, T *c, ptrdiff_t ldc, const EPILOGUE *ep,
                                int num_threads) {
    size_t shared_bytes = NNK_FN(nnk_team_shared_bytes)(m, k);
    PLAN plan = NNK_FN(nnk_plan_gemm)(m, n, k, num_threads, NNK_GEMM_PARALLEL_MIN_MNK, shared_bytes);
    T *a_shared = plan.share_a ? nnk_workspace(NNK_WS_SHARED_A, shared_bytes) : NULL;
    if (plan.share_a && !a_shared) return -1;
    int failed = 0;
#pragma omp parallel num_threads(plan.threads) if (plan.threads > 1) reduction(|| : failed)
    {
        PLAN mine = plan;
        int thread = nnk_thread_id();
        if (nnk_region_size() != plan.threads) { /* fewer threads granted (nested): thread 0 alone */
            mine.threads = 1;
            mine.share_a = 0;
        }
        if (thread < mine.threads)
            failed = NNK_FN(nnk_gemm_share)(&mine, thread, NULL, a_shared, trans_a, trans_b, m, n, k, a, lda,
                                            b, ldb, b_packed, c, ldc, ep) != 0;
    }
    return failed ? -1 : 0;
}

/* C = op(A) @ op(B) with the epilogue, split over a running team: every thread of it calls
 * this with the same arguments (and its own index). The team's shared buffer `slot` (0 or
 * 1), when large enough (nnk_team_shared_bytes(m, k)), lets column slices pack A once,
 * together; two products in one phase (no barrier between them) must use different slots.
 * Returns this thread's status. */
static int NNK_FN(nnk_gemm_team)(nnk_team *team, int thread, int slot, int trans_a, int trans_b,
                                 ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const T *a, ptrdiff_t lda,
                                 const T *b, ptrdiff_t ldb, T *c, ptrdiff_t ldc, const EPILOGUE *ep) {
    T *shared = (T *)team->shared[slot];
    PLAN plan = NNK_FN(nnk_plan_gemm)(m, n, k, team->size, NNK_TEAM_PARALLEL_MIN_MNK,
                                      shared ? team->shared_bytes : 0);
    return NNK_FN(nnk_gemm_share)(&plan, thread, team, shared, trans_a, trans_b, m, n, k, a, lda, b, ldb,
                                  NULL, c, ldc, ep);
}

/* C (m x n, row stride ldc) = op(A) @ op(B) with the epilogue ep (NULL: none). op(A) is
 * m x k: A is m x k (row stride lda), or k x m when trans_a; likewise op(B) is k x n. */
static int NNK_FN(nnk_gemm)(int trans_a, int trans_b, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k,
                            const T *a, ptrdiff_t lda, const T *b, ptrdiff_t ldb, T *c, ptrdiff_t ldc,
                            const EPILOGUE *ep, int num_threads) {
    return NNK_FN(nnk_gemm_run)(trans_a, trans_b, m, n, k, a, lda, b, ldb, NULL, c, ldc, ep, num_threads);
}

/* As nnk_gemm, with op(B) packed beforehand by nnk_pack_b. */
static int NNK_FN(nnk_gemm_packed_b)(int trans_a, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const T *a,
                                     ptrdiff_t lda, const T *b_packed, T *c, ptrdiff_t ldc,
                                     const EPILOGUE *ep, int num_threads) {
    return NNK_FN(nnk_gemm_run)(trans_a, 0, m, n, k, a, lda, NULL, 0, b_packed, c, ldc, ep, num_threads);
}

#undef NNK_FN
#undef T
#undef VEC
#undef VLEN
#undef NV
#undef MR
#undef NR
#undef EPILOGUE
#undef NNK_HAS_TRANSPOSE8
#undef ACT_BLOCK
#undef ACT_GRAD_BLOCK
#undef BLOCKING
#undef PLAN
