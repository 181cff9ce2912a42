/* Instruction sets of a portable build. Built with -march=native (or any -mavx2), the
 * kernels are compiled for that CPU alone. A portable x86-64 build (NNKERN_NATIVE=OFF, the
 * wheel people download) compiles the hot loops for several instruction sets and runs the
 * best one the CPU has: the GEMM (and sparse-input kernels) as explicit variants
 * (nnk_gemm.h, NNK_DISPATCH), the loops outside it (activations, the update rules) as GCC
 * function clones picked at load time (NNK_MULTIVERSION). Without the clones a portable
 * build ran those loops as SSE2: the deep MNIST step 0.81x the native build's speed on an
 * AVX-512 Xeon, its activation gradients a call per tile that the native build inlines.
 * Not a public header. */
#ifndef NNK_DISPATCH_H
#define NNK_DISPATCH_H

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__AVX2__)
#define NNK_DISPATCH 1
#define NNK_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define NNK_MULTIVERSION
#endif

#endif /* NNK_DISPATCH_H */
