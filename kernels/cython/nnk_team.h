/* A team of threads that runs many short phases inside one OpenMP parallel region (the
 * fused training step): every phase splits its work over the team, and a barrier ends it.
 *
 * Why not an OpenMP barrier or one parallel region per phase: nnkern bounds libgomp's spin
 * to ~60-100 us (see nnkern/_threads.py), after which a waiting thread sleeps and is woken
 * through the kernel, ~65 us each on the development VM; and a region start or barrier that
 * finds its partner preempted pays that spin. A training step at batch 64 has ~20 phases of
 * 10-300 us, so one region with this team's own barrier is what keeps the second core.
 * This barrier spins for a few microseconds (the usual wait between balanced phases), then
 * yields the core while it waits, so a thread waiting on a descheduled partner does not
 * steal the time that partner needs when another process competes for the cores. */
#ifndef NNK_TEAM_H
#define NNK_TEAM_H

#include <sched.h>
#include <stddef.h>

/* Spins (each a pause, ~10-40 ns) before a waiting thread starts yielding its core. */
#ifndef NNK_TEAM_SPINS
#define NNK_TEAM_SPINS 2000
#endif

typedef struct {
    int size;             /* threads in the team */
    int arrived;          /* threads at the current barrier */
    unsigned generation;  /* barriers completed */
    /* Work buffers every thread of the team sees (64-byte aligned, shared_bytes each): two,
     * so that two products running in one phase can each share one. */
    void *shared[2];
    size_t shared_bytes;
} nnk_team;

static inline void nnk_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Wait until every thread of the team has arrived; memory written before the barrier by
 * any thread is visible after it to all. */
static inline void nnk_team_barrier(nnk_team *team) {
    if (team->size <= 1) return;
    unsigned generation = __atomic_load_n(&team->generation, __ATOMIC_ACQUIRE);
    if (__atomic_add_fetch(&team->arrived, 1, __ATOMIC_ACQ_REL) == team->size) {
        __atomic_store_n(&team->arrived, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&team->generation, generation + 1, __ATOMIC_RELEASE);
        return;
    }
    for (long spins = 0; __atomic_load_n(&team->generation, __ATOMIC_ACQUIRE) == generation; spins++) {
        if (spins < NNK_TEAM_SPINS)
            nnk_cpu_relax();
        else
            sched_yield();
    }
}

/* Claim the next unit of work from a counter the team's threads share (starting at 0):
 * returns its index. Threads that claim units as they finish them balance a phase by
 * themselves when one runs slower (another process on its core). */
static inline int nnk_claim(int *counter) { return __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED); }

/* Set a flag any thread of a team may set (to 1) while others do too. */
static inline void nnk_flag_set(int *flag) { __atomic_store_n(flag, 1, __ATOMIC_RELAXED); }

/* Split `units` into `parts` near-equal ranges: [*lo, *hi) is part `part`'s. */
static inline void nnk_partition(ptrdiff_t units, int parts, int part, ptrdiff_t *lo, ptrdiff_t *hi) {
    ptrdiff_t base = units / parts, extra = units % parts;
    *lo = part * base + (part < extra ? part : extra);
    *hi = *lo + base + (part < extra ? 1 : 0);
}

#endif /* NNK_TEAM_H */
