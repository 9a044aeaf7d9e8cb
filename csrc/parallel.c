/* parallel.c: fork-join over POSIX threads for kernels made of independent parts (parallel.h).
 * Holds no math and no state between calls. */
#include "parallel.h"

#include <pthread.h>

#include "blas.h"

typedef struct {
    peftc_part_fn fn;
    void *ctx;
    int64_t t, nparts;
    peftc_status status;
} part_job;

static void *run_part(void *arg)
{
    part_job *job = arg;
    job->status = job->fn(job->ctx, job->t, job->nparts);
    return NULL;
}

int64_t peftc_parallel_threads(void)
{
    const int64_t n = peftc_blas_threads();
    return n < 1 ? 1 : n > PEFTC_MAX_THREADS ? PEFTC_MAX_THREADS : n;
}

peftc_status peftc_parallel_run(peftc_part_fn fn, void *ctx, int64_t nparts)
{
    if (nparts < 1 || nparts > PEFTC_MAX_THREADS)
        return PEFTC_ERR_ARG;
    part_job jobs[PEFTC_MAX_THREADS];
    pthread_t threads[PEFTC_MAX_THREADS];
    int started[PEFTC_MAX_THREADS];
    for (int64_t t = 0; t < nparts; t++)
        jobs[t] = (part_job){fn, ctx, t, nparts, PEFTC_OK};
    for (int64_t t = 1; t < nparts; t++)
        started[t] = pthread_create(&threads[t], NULL, run_part, &jobs[t]) == 0;
    run_part(&jobs[0]);
    peftc_status st = jobs[0].status;
    for (int64_t t = 1; t < nparts; t++) {
        if (started[t])
            pthread_join(threads[t], NULL);
        else
            run_part(&jobs[t]); /* no thread to be had: run the part here, the result is the same */
        if (st == PEFTC_OK)
            st = jobs[t].status;
    }
    return st;
}

peftc_status peftc_parallel_run_blas(peftc_part_fn fn, void *ctx, int64_t nparts)
{
    peftc_blas_single_thread_begin();
    const peftc_status st = peftc_parallel_run(fn, ctx, nparts);
    peftc_blas_single_thread_end();
    return st;
}
