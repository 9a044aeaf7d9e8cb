/* parallel.h: run independent parts of one kernel on several threads (fork-join per call, on worker
 * threads kept between calls). Used where OpenBLAS's own threading does not pay: many small GEMMs
 * (attention's (batch, head) blocks, convolution blocks), which are better run single-threaded side by
 * side, and memory-bound passes split by channel. A thread that cannot be had is replaced by running
 * its part on the calling thread. */
#ifndef PEFTC_PARALLEL_H
#define PEFTC_PARALLEL_H

#include <stdint.h>

#include "peftc.h"

#define PEFTC_MAX_THREADS 64

/* part t of nparts; returns its status (the first failure of any part is the call's result) */
typedef peftc_status (*peftc_part_fn)(void *ctx, int64_t t, int64_t nparts);

/* threads to use: the BLAS thread count (peftc follows OPENBLAS_NUM_THREADS), in [1, PEFTC_MAX_THREADS] */
int64_t peftc_parallel_threads(void);

/* fn(ctx, t, nparts) for t = 0 .. nparts-1, part 0 on the calling thread, each other on a thread of
 * its own; nparts must be in [1, PEFTC_MAX_THREADS]. Safe to call from several threads at once and
 * from inside a part. */
peftc_status peftc_parallel_run(peftc_part_fn fn, void *ctx, int64_t nparts);

/* peftc_parallel_run with OpenBLAS held at one thread meanwhile (peftc_blas_single_thread_begin): for
 * parts that call BLAS or LAPACK, each call then runs whole on its part's thread, whatever its size. */
peftc_status peftc_parallel_run_blas(peftc_part_fn fn, void *ctx, int64_t nparts);

/* [begin, end) of part t when n items are split into nparts contiguous ranges */
static inline void peftc_part_range(int64_t n, int64_t t, int64_t nparts, int64_t *begin, int64_t *end)
{
    *begin = n * t / nparts;
    *end = n * (t + 1) / nparts;
}

/* parts for n independent items when a part should hold at least min_items (handing a part to
 * another thread costs microseconds: small inputs run on the calling thread alone) */
static inline int64_t peftc_parallel_parts(int64_t n, int64_t min_items)
{
    const int64_t most = min_items > 0 ? n / min_items : n;
    const int64_t threads = peftc_parallel_threads();
    return most < 1 ? 1 : most < threads ? most : threads;
}

#endif
