/* GEMM of the Cython backend: C = op(A) @ op(B), with an optional fused epilogue.
 *
 * Goto/BLIS structure (Goto & van de Geijn 2008): B is packed into NR-column panels
 * covering the whole of K (the same layout nnk_pack_b_* produces once for reuse), K is
 * split into KC blocks, M into MC blocks whose A block is packed into MR-row panels, and an
 * MR x NR register-tiled micro-kernel runs over each pair of panels. Transposes cost
 * nothing: they only change how the packing reads. Panels are zero-padded to MR/NR
 * multiples, so the micro-kernel never branches on edges; only the write-back does.
 *
 * Threads (OpenMP) each take an independent slice of C: columns or rows, whichever gives
 * the busiest thread fewer tiles. Column slices all read every row of A: when that is one M
 * block the threads pack it together first (one barrier), else each packs its own.
 * nnk_gemm_* opens a parallel region per product; nnk_gemm_team_* is called by every
 * thread of an nnk_team already running (the fused training step) and splits the product
 * over it.
 *
 * Epilogue, applied to each output tile after its last K block while it is still in L1:
 *   + bias (per column), then act(.)           (forward of a fused linear layer), or
 *   * act'(grad_src)                            (backward mask: dY @ W.T times act'(x or y));
 * then, per finished block of a thread's slice (an M block of the columns packed together),
 * an optional hook (block_done) that consumes that block while it is still in cache (the
 * fused step's weight update).
 *
 * Instruction sets: built with -march=native (or any -mavx2), the one variant for that CPU
 * is compiled. A portable x86-64 build compiles three variants (AVX-512, AVX2+FMA, SSE2)
 * and picks one at run time from what the CPU supports.
 *
 * The gemm functions return 0, or -1 when a buffer could not be allocated.
 */
#ifndef NNK_GEMM_H
#define NNK_GEMM_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__x86_64__)
#include <immintrin.h> /* the sparse row scan's compare-to-mask (nnk_sparse_impl.h) */
#endif

#include "nnk_act.h"
#include "nnk_dispatch.h"
#include "nnk_team.h"

/* Vector width and register tile per instruction set. AVX-512 has 32 vector registers:
 * 8 x 2 accumulators leave room for the B row and the broadcasts (on a Sapphire Rapids
 * Xeon, 1 thread, 8 rows ran the training shapes at 0.89-1.13x OpenBLAS's speed, 12 rows
 * 0.80-1.11x, 14 rows slower still); AVX2 and SSE have 16: 6 x 2 accumulators. NR is two
 * vectors of the element type. */
#define NNK_AVX512_VEC_BYTES 64
#ifndef NNK_AVX512_MR
#define NNK_AVX512_MR 8
#endif
#define NNK_AVX2_VEC_BYTES 32
#ifndef NNK_AVX2_MR
#define NNK_AVX2_MR 6
#endif
#define NNK_SSE_VEC_BYTES 16
#define NNK_SSE_MR 6

/* The epilogue of one product, per element type. */
#define NNK_EPILOGUE_DEFINE(T, S)                                                              \
    typedef struct {                                                                           \
        const T *bias;         /* added to every row after the last K block, or NULL */        \
        int act;               /* activation code (nnk_act.h); NNK_IDENTITY: none */          \
        T slope;               /* leaky_relu's negative slope */                               \
        const T *grad_src;     /* NULL: C = act(C + bias). Otherwise C *= act'(grad_src),     \
                                  grad_src being the activation's input x, or its output y    \
                                  for the activations nnk_grad_needs_output() names */        \
        ptrdiff_t ld_grad_src; /* row stride of grad_src */                                    \
        /* Called once per finished block of C (its last K block done, the above applied)    \
           with the block's address, row stride and size, while it is still in cache: the     \
           fused training step updates a weight there from its gradient. NULL: none. */       \
        void (*block_done)(void *context, T *block, ptrdiff_t ldc, ptrdiff_t rows, ptrdiff_t cols); \
        void *block_context;                                                                   \
    } nnk_epilogue_##S;                                                                        \
                                                                                               \
    /* The epilogue with these fields and no block hook. */                                   \
    static inline nnk_epilogue_##S nnk_epilogue_of_##S(const T *bias, int act, T slope,        \
                                                       const T *grad_src, ptrdiff_t ld_grad_src) { \
        nnk_epilogue_##S ep = {bias, act, slope, grad_src, ld_grad_src, NULL, NULL};           \
        return ep;                                                                             \
    }
NNK_EPILOGUE_DEFINE(float, s)
NNK_EPILOGUE_DEFINE(double, d)

/* Cache budgets the blocking is sized from: the packed A block stays in L2, a packed B
 * column block in L3 (the per-core L2 here is 512 KiB, the shared L3 32 MiB). */
#ifndef NNK_L2_BUDGET
#define NNK_L2_BUDGET (256 * 1024)
#endif
#ifndef NNK_L3_BUDGET
#define NNK_L3_BUDGET (4 * 1024 * 1024)
#endif
/* Below this m*n*k one thread does the product: starting the team costs more. Inside a
 * running team (nnk_gemm_team_*) a split costs only a spinning barrier, but a product this
 * small (a few microseconds on one core) still finishes sooner on one thread than it waits
 * for a partner that the machine has slowed down. */
#define NNK_GEMM_PARALLEL_MIN_MNK (1 << 17)
#ifndef NNK_TEAM_PARALLEL_MIN_MNK
#define NNK_TEAM_PARALLEL_MIN_MNK (1 << 18)
#endif

static inline ptrdiff_t nnk_min(ptrdiff_t a, ptrdiff_t b) { return a < b ? a : b; }
static inline ptrdiff_t nnk_max(ptrdiff_t a, ptrdiff_t b) { return a > b ? a : b; }
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

/* Packing buffers, kept per thread from one product to the next and only ever grown:
 * allocating them per call cost page faults (a fresh mmap for the larger ones) and made
 * two-thread products erratic. They live as long as their thread (the OpenMP pool's
 * threads live as long as the process). Returns NULL when memory runs out. */
enum { NNK_WS_A_BLOCK, NNK_WS_B, NNK_WS_SHARED_A, NNK_WS_COUNT };
static void *nnk_workspace(int slot, size_t bytes) {
    static __thread void *buffers[NNK_WS_COUNT];
    static __thread size_t capacity[NNK_WS_COUNT];
    if (bytes > capacity[slot]) {
        free(buffers[slot]);
        buffers[slot] = nnk_alloc(bytes);
        capacity[slot] = buffers[slot] ? bytes : 0;
    }
    return buffers[slot];
}

static inline int nnk_thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* Threads in the innermost parallel region (1 outside any). */
static inline int nnk_region_size(void) {
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

typedef void (*nnk_team_fn)(nnk_team *team, int thread, void *context);

/* Run fn(team, thread, context) on `threads` threads in one parallel region, team->size
 * set to the number that run it (when fewer are granted, as when nested in another region,
 * thread 0 runs it alone). team's shared buffer is the caller's to set. */
static void nnk_team_run(nnk_team *team, int threads, nnk_team_fn fn, void *context) {
    team->size = threads > 1 ? threads : 1;
    team->arrived = 0;
#pragma omp parallel num_threads(team->size) if (team->size > 1)
    {
        int thread = nnk_thread_id();
        if (nnk_region_size() == team->size) {
            fn(team, thread, context);
        } else if (thread == 0) {
            nnk_team solo = *team;
            solo.size = 1;
            fn(&solo, 0, context);
        }
    }
}

/* The sparse-input kernels' column lists (nnk_sparse_impl.h) of columns [s * chunk,
 * (s + 1) * chunk) (or to k), from the row lists and row splits of all m rows (of any
 * element type); each list ascends. */
__attribute__((noinline)) static void nnk_sparse_index_columns(ptrdiff_t m, ptrdiff_t k, const int32_t *cols,
                                                               const int32_t *splits, ptrdiff_t chunk, ptrdiff_t s,
                                                               int32_t *rows_of, int32_t *col_count) {
    const ptrdiff_t chunks = nnk_ceil_div(k, chunk);
    for (ptrdiff_t c = s * chunk; c < k && c < (s + 1) * chunk; c++) col_count[c] = 0;
    for (ptrdiff_t i = 0; i < m; i++) {
        const int32_t *list = cols + i * k, *split = splits + i * (chunks + 1);
        for (ptrdiff_t e = split[s]; e < split[s + 1]; e++) {
            int32_t c = list[e];
            rows_of[c * m + col_count[c]++] = (int32_t)i;
        }
    }
}

#define NNK_PASTE2(a, b) a##_##b
#define NNK_PASTE(a, b) NNK_PASTE2(a, b)

/* K block targets: a kc x NR sliver of B (16 KiB at kc = 256, both types) and an MR x kc
 * sliver of A stay in a 32 KiB L1 together. Measured here (1 core): 256 was as fast as
 * 384 at the MNIST shapes, and BLIS uses 256 for AVX2 sgemm. Overridable for tuning. */
#ifndef NNK_KC_TARGET_S
#define NNK_KC_TARGET_S 256
#endif
#ifndef NNK_KC_TARGET_D
#define NNK_KC_TARGET_D 256
#endif

/* nnk_gemm_isa.h instantiates the float and double GEMM for the instruction set NNK_ISA
 * (a name suffix), with vector width NNK_VEC_BYTES and tile height NNK_MR. */
#ifdef NNK_DISPATCH
#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
#define NNK_ISA avx512
#define NNK_VEC_BYTES NNK_AVX512_VEC_BYTES
#define NNK_MR NNK_AVX512_MR
#include "nnk_gemm_isa.h"
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define NNK_ISA avx2
#define NNK_VEC_BYTES NNK_AVX2_VEC_BYTES
#define NNK_MR NNK_AVX2_MR
#include "nnk_gemm_isa.h"
#pragma GCC pop_options

#define NNK_ISA sse
#define NNK_VEC_BYTES NNK_SSE_VEC_BYTES
#define NNK_MR NNK_SSE_MR
#include "nnk_gemm_isa.h"

/* 2: AVX-512, 1: AVX2 + FMA, 0: SSE2 (checked once; the answer never changes) */
static int nnk_isa_level(void) {
    static int level = -1;
    if (level < 0)
        level = __builtin_cpu_supports("avx512f") ? 2
                : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 1 : 0;
    return level;
}
#define NNK_CALL(name, S, args)                                                                \
    (nnk_isa_level() == 2 ? NNK_PASTE(NNK_PASTE(name, S), avx512) args                       \
     : nnk_isa_level() == 1 ? NNK_PASTE(NNK_PASTE(name, S), avx2) args                       \
                            : NNK_PASTE(NNK_PASTE(name, S), sse) args)
#else
#define NNK_ISA native
#if defined(__AVX512F__)
#define NNK_VEC_BYTES NNK_AVX512_VEC_BYTES
#define NNK_MR NNK_AVX512_MR
#elif defined(__AVX__)
#define NNK_VEC_BYTES NNK_AVX2_VEC_BYTES
#define NNK_MR NNK_AVX2_MR
#else
#define NNK_VEC_BYTES NNK_SSE_VEC_BYTES
#define NNK_MR NNK_SSE_MR
#endif
#include "nnk_gemm_isa.h"
#define NNK_CALL(name, S, args) NNK_PASTE(NNK_PASTE(name, S), native) args
#endif

/* Which GEMM variant runs here, and how it was chosen (`nnkern info` prints it). */
static inline const char *nnk_gemm_variant(void) {
#ifdef NNK_DISPATCH
    static const char *names[] = {"SSE2 tiles, portable build (chosen at run time)",
                                  "AVX2+FMA tiles, portable build (chosen at run time)",
                                  "AVX-512 tiles, portable build (chosen at run time)"};
    return names[nnk_isa_level()];
#elif defined(__AVX512F__)
    return "AVX-512 tiles, native build (-march=native)";
#elif defined(__AVX__)
    return "AVX2 tiles, native build (-march=native)";
#else
    return "128-bit tiles, native build";
#endif
}

/* The public entry points (see gemm.pxd), for the variant this CPU runs. */
#define NNK_PUBLIC_DEFINE(T, S)                                                                \
    static inline size_t nnk_packed_b_size_##S(ptrdiff_t k, ptrdiff_t n) {                     \
        return NNK_CALL(nnk_packed_b_size, S, (k, n));                                         \
    }                                                                                          \
    static inline void nnk_pack_b_##S(int trans_b, ptrdiff_t k, ptrdiff_t n, const T *b,       \
                                      ptrdiff_t ldb, T *dst, int num_threads) {                \
        NNK_CALL(nnk_pack_b, S, (trans_b, k, n, b, ldb, dst, num_threads));                    \
    }                                                                                          \
    static inline int nnk_gemm_##S(int trans_a, int trans_b, ptrdiff_t m, ptrdiff_t n,         \
                                   ptrdiff_t k, const T *a, ptrdiff_t lda, const T *b,         \
                                   ptrdiff_t ldb, T *c, ptrdiff_t ldc,                         \
                                   const nnk_epilogue_##S *ep, int num_threads) {              \
        return NNK_CALL(nnk_gemm, S, (trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc, ep,   \
                                      num_threads));                                           \
    }                                                                                          \
    static inline int nnk_gemm_team_##S(nnk_team *team, int thread, int slot, int trans_a,      \
                                        int trans_b, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k,      \
                                        const T *a, ptrdiff_t lda, const T *b, ptrdiff_t ldb,    \
                                        T *c, ptrdiff_t ldc, const nnk_epilogue_##S *ep) {       \
        return NNK_CALL(nnk_gemm_team, S, (team, thread, slot, trans_a, trans_b, m, n, k, a,    \
                                           lda, b, ldb, c, ldc, ep));                            \
    }                                                                                          \
    static inline void nnk_sparse_index_rows_##S(const T *x, ptrdiff_t ldx, ptrdiff_t k,         \
                                                 ptrdiff_t r0, ptrdiff_t r1, int32_t *cols,       \
                                                 int32_t *row_count, ptrdiff_t chunk,             \
                                                 int32_t *splits) {                               \
        NNK_CALL(nnk_sparse_index_rows, S, (x, ldx, k, r0, r1, cols, row_count, chunk, splits));  \
    }                                                                                          \
    static inline void nnk_sparse_linear_##S(ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t n, ptrdiff_t k, \
                                             const T *x, ptrdiff_t ldx, const int32_t *cols,      \
                                             const int32_t *row_count, const T *w, ptrdiff_t ldw, \
                                             const T *bias, int act, T slope, T *out,            \
                                             ptrdiff_t ldo) {                                     \
        NNK_CALL(nnk_sparse_linear, S, (r0, r1, n, k, x, ldx, cols, row_count, w, ldw, bias, act, \
                                        slope, out, ldo));                                       \
    }                                                                                          \
    static inline void nnk_sparse_weight_grad_##S(ptrdiff_t c0, ptrdiff_t c1, ptrdiff_t m,        \
                                                  ptrdiff_t n, const T *x, ptrdiff_t ldx,         \
                                                  const int32_t *rows_of, const int32_t *col_count, \
                                                  const T *delta, ptrdiff_t ld_delta, T *gw,      \
                                                  ptrdiff_t ldg, const nnk_epilogue_##S *ep) {    \
        NNK_CALL(nnk_sparse_weight_grad, S, (c0, c1, m, n, x, ldx, rows_of, col_count, delta,    \
                                             ld_delta, gw, ldg, ep));                             \
    }                                                                                          \
    static inline size_t nnk_team_shared_bytes_##S(ptrdiff_t m, ptrdiff_t k) {                 \
        return NNK_CALL(nnk_team_shared_bytes, S, (m, k));                                     \
    }                                                                                          \
    static inline int nnk_gemm_packed_b_##S(int trans_a, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k,\
                                            const T *a, ptrdiff_t lda, const T *b_packed,      \
                                            T *c, ptrdiff_t ldc, const nnk_epilogue_##S *ep,   \
                                            int num_threads) {                                 \
        return NNK_CALL(nnk_gemm_packed_b, S, (trans_a, m, n, k, a, lda, b_packed, c, ldc, ep, \
                                               num_threads));                                  \
    }
NNK_PUBLIC_DEFINE(float, s)
NNK_PUBLIC_DEFINE(double, d)

#endif /* NNK_GEMM_H */
