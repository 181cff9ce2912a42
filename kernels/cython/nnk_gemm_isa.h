/* Instantiates the float and double GEMM of nnk_gemm_impl.h, and the sparse-input kernels
 * of nnk_sparse_impl.h, for one instruction set:
 * included by nnk_gemm.h with NNK_ISA (the name suffix), NNK_VEC_BYTES and NNK_MR
 * defined, which it undefines again. Not a public header. */

#define NNK_T float
#define NNK_TS s
#define NNK_S NNK_PASTE(s, NNK_ISA)
#define NNK_NR (2 * NNK_VEC_BYTES / 4)
#define NNK_KC_TARGET NNK_KC_TARGET_S
#include "nnk_gemm_impl.h"
#include "nnk_sparse_impl.h"
#undef NNK_T
#undef NNK_TS
#undef NNK_S
#undef NNK_NR
#undef NNK_KC_TARGET

#define NNK_T double
#define NNK_TS d
#define NNK_S NNK_PASTE(d, NNK_ISA)
#define NNK_NR (2 * NNK_VEC_BYTES / 8)
#define NNK_KC_TARGET NNK_KC_TARGET_D
#include "nnk_gemm_impl.h"
#include "nnk_sparse_impl.h"
#undef NNK_T
#undef NNK_TS
#undef NNK_S
#undef NNK_NR
#undef NNK_KC_TARGET

#undef NNK_ISA
#undef NNK_VEC_BYTES
#undef NNK_MR
