/* GEMM of the Cython backend: C = op(A) @ op(B), with an optional fused epilogue.
 *
 * Goto/BLIS structure (Goto & van de Geijn 2008): B is packed into NR-column panels
 * covering the whole of K (the same layout nnk_pack_b_* produces once for reuse), K is
 * split into KC blocks, M into MC blocks whose A block is packed into MR-row panels, and an
 * MR x NR register-tiled micro-kernel runs over each pair of panels. Transposes cost
 * nothing: they only change how the packing reads. Panels are zero-padded to MR/NR
 * multiples, so the micro-kernel never branches on edges; only the write-back does.
 *
 * Threads (OpenMP) each take an independent slice of C: columns when M <= N (each packs
 * all of A, which is the smaller operand then), rows otherwise; no barriers, no sharing.
 *
 * Epilogue, applied to each output tile after its last K block while it is still in L1:
 *   + bias (per column), then act(.)           (forward of a fused linear layer), or
 *   * act'(grad_src)                            (backward mask: dY @ W.T times act'(x or y)).
 *
 * All functions return 0, or -1 when a buffer could not be allocated.
 */
#ifndef NNK_GEMM_H
#define NNK_GEMM_H

#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "nnk_act.h"

/* Vector width and register tile per instruction set. AVX-512 has 32 vector registers:
 * 8 x 2 accumulators leave room for the B row and the broadcasts; AVX2 and SSE have 16:
 * 6 x 2 accumulators. */
#if defined(__AVX512F__)
#define NNK_VEC_BYTES 64
#define NNK_MR 8
#elif defined(__AVX__)
#define NNK_VEC_BYTES 32
#define NNK_MR 6
#else
#define NNK_VEC_BYTES 16
#define NNK_MR 6
#endif
/* NR is two vectors of the element type. */
#define NNK_NR_S (2 * NNK_VEC_BYTES / 4)
#define NNK_NR_D (2 * NNK_VEC_BYTES / 8)

/* Cache budgets the blocking is sized from: the packed A block stays in L2, a packed B
 * column block in L3 (the per-core L2 here is 512 KiB, the shared L3 32 MiB). */
#ifndef NNK_L2_BUDGET
#define NNK_L2_BUDGET (256 * 1024)
#endif
#ifndef NNK_L3_BUDGET
#define NNK_L3_BUDGET (4 * 1024 * 1024)
#endif
/* Below this m*n*k one thread does the product: starting the team costs more. */
#define NNK_GEMM_PARALLEL_MIN_MNK (1 << 17)

static inline ptrdiff_t nnk_min(ptrdiff_t a, ptrdiff_t b) { return a < b ? a : b; }
static inline ptrdiff_t nnk_round_up(ptrdiff_t x, ptrdiff_t unit) { return (x + unit - 1) / unit * unit; }
static inline ptrdiff_t nnk_ceil_div(ptrdiff_t x, ptrdiff_t y) { return (x + y - 1) / y; }

/* A block length near `target` that splits `total` into equal blocks, as a multiple of
 * `unit`: e.g. K = 784 with target 384 gives two blocks of 392, not 384 + 400. */
static inline ptrdiff_t nnk_balanced_block(ptrdiff_t total, ptrdiff_t target, ptrdiff_t unit) {
    ptrdiff_t blocks = (total + target / 2) / target;
    if (blocks < 1) blocks = 1;
    return nnk_round_up(nnk_ceil_div(total, blocks), unit);
}

static inline void *nnk_alloc(size_t bytes) { return aligned_alloc(64, (bytes + 63) / 64 * 64); }

static inline int nnk_thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* Split `units` (MR-row or NR-column panels) into `parts` near-equal ranges. */
static inline void nnk_partition(ptrdiff_t units, int parts, int part, ptrdiff_t *lo, ptrdiff_t *hi) {
    ptrdiff_t base = units / parts, extra = units % parts;
    *lo = part * base + (part < extra ? part : extra);
    *hi = *lo + base + (part < extra ? 1 : 0);
}

#define NNK_PASTE2(a, b) a##_##b
#define NNK_PASTE(a, b) NNK_PASTE2(a, b)

#ifndef NNK_KC_TARGET_S
#define NNK_KC_TARGET_S 384
#endif
#ifndef NNK_KC_TARGET_D
#define NNK_KC_TARGET_D 256
#endif

#define NNK_T float
#define NNK_S s
#define NNK_NR NNK_NR_S
#define NNK_KC_TARGET NNK_KC_TARGET_S
#include "nnk_gemm_impl.h"
#undef NNK_T
#undef NNK_S
#undef NNK_NR
#undef NNK_KC_TARGET

#define NNK_T double
#define NNK_S d
#define NNK_NR NNK_NR_D
#define NNK_KC_TARGET NNK_KC_TARGET_D
#include "nnk_gemm_impl.h"
#undef NNK_T
#undef NNK_S
#undef NNK_NR
#undef NNK_KC_TARGET

#endif /* NNK_GEMM_H */
