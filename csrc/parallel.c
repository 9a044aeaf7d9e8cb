/* parallel.c: fork-join over POSIX threads for kernels made of independent parts (parallel.h).
 * Holds no math. The worker threads are kept between calls (a pool started on first use): waking a
 * waiting thread costs a few microseconds, creating one tens. One call owns the pool at a time; a
 * call that finds it taken (a call from another thread, or a part that runs parts of its own) starts
 * threads of its own for that call, as does any part the pool has no worker for. A forked child
 * starts with no pool and builds its own. */
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

/* The pool: worker w (1 .. workers) runs job w of each call whose nparts exceeds w. All fields are
 * guarded by lock. */
static struct {
    pthread_mutex_t lock;
    pthread_cond_t wake, done;
    int busy;                         /* a call owns the pool */
    int64_t workers;                  /* started */
    uint64_t generation;              /* calls dispatched so far */
    part_job *jobs;                   /* the owning call's jobs */
    int64_t nparts, pending;          /* its part count, and its pool parts not finished yet */
    uint64_t born[PEFTC_MAX_THREADS]; /* the generation when worker w was started: it waits for the next */
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, NULL, 0, 0, {0}};

/* Waits spin this many pauses before sleeping (about 0.1 ms where a pause takes 24 ns, as on the EPYC
 * this was tuned on): kernels come back to back, and waking a sleeping thread can cost as much as a
 * small kernel's part, on a virtual machine more. */
#define POOL_SPIN 4000

static inline void spin_pause(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* spin while *word == value, at most POOL_SPIN pauses; lock-free reads of a field written under lock */
static void spin_while_equal(const uint64_t *word, uint64_t value)
{
    for (int i = 0; i < POOL_SPIN && __atomic_load_n(word, __ATOMIC_ACQUIRE) == value; i++)
        spin_pause();
}

static void *pool_worker(void *arg)
{
    const int64_t w = (int64_t)(intptr_t)arg;
    pthread_mutex_lock(&pool.lock);
    uint64_t seen = pool.born[w];
    for (;;) {
        pthread_mutex_unlock(&pool.lock);
        spin_while_equal(&pool.generation, seen);
        pthread_mutex_lock(&pool.lock);
        while (pool.generation == seen)
            pthread_cond_wait(&pool.wake, &pool.lock);
        seen = pool.generation;
        if (w >= pool.nparts)
            continue;
        part_job *job = &pool.jobs[w];
        pthread_mutex_unlock(&pool.lock);
        run_part(job);
        pthread_mutex_lock(&pool.lock);
        if (__atomic_sub_fetch(&pool.pending, 1, __ATOMIC_RELEASE) == 0)
            pthread_cond_signal(&pool.done);
    }
    return NULL;
}

/* the child of a fork has none of the parent's threads: start over with an empty pool */
static void pool_after_fork_child(void)
{
    pthread_mutex_init(&pool.lock, NULL);
    pthread_cond_init(&pool.wake, NULL);
    pthread_cond_init(&pool.done, NULL);
    pool.busy = 0;
    pool.workers = 0;
    pool.jobs = NULL;
    pool.nparts = pool.pending = 0;
}

static pthread_once_t pool_once = PTHREAD_ONCE_INIT;

static void pool_register_fork(void)
{
    pthread_atfork(NULL, NULL, pool_after_fork_child);
}

/* workers up to want (under lock); returns how many there are */
static int64_t pool_grow(int64_t want)
{
    while (pool.workers < want) {
        pthread_t thread;
        pthread_attr_t attr;
        if (pthread_attr_init(&attr) != 0)
            break;
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pool.born[pool.workers + 1] = pool.generation;
        const int failed = pthread_create(&thread, &attr, pool_worker, (void *)(intptr_t)(pool.workers + 1));
        pthread_attr_destroy(&attr);
        if (failed)
            break;
        pool.workers++;
    }
    return pool.workers;
}

/* every part on a thread of its own (or on the calling thread when none can be had) */
static void run_spawned(part_job *jobs, int64_t nparts)
{
    pthread_t threads[PEFTC_MAX_THREADS];
    int started[PEFTC_MAX_THREADS];
    for (int64_t t = 1; t < nparts; t++)
        started[t] = pthread_create(&threads[t], NULL, run_part, &jobs[t]) == 0;
    run_part(&jobs[0]);
    for (int64_t t = 1; t < nparts; t++) {
        if (started[t])
            pthread_join(threads[t], NULL);
        else
            run_part(&jobs[t]); /* no thread to be had: run the part here, the result is the same */
    }
}

/* parts 1 .. nparts-1 on the pool's workers, those without a worker and part 0 here; 0 when the pool
 * is taken */
static int run_pooled(part_job *jobs, int64_t nparts)
{
    pthread_once(&pool_once, pool_register_fork);
    pthread_mutex_lock(&pool.lock);
    if (pool.busy) {
        pthread_mutex_unlock(&pool.lock);
        return 0;
    }
    pool.busy = 1;
    const int64_t workers = pool_grow(nparts - 1);
    const int64_t pooled = workers < nparts - 1 ? workers : nparts - 1;
    pool.jobs = jobs;
    pool.nparts = pooled + 1;
    pool.pending = pooled;
    __atomic_add_fetch(&pool.generation, 1, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.lock);
    run_part(&jobs[0]);
    for (int64_t t = pooled + 1; t < nparts; t++)
        run_part(&jobs[t]);
    for (int i = 0; i < POOL_SPIN && __atomic_load_n(&pool.pending, __ATOMIC_ACQUIRE) > 0; i++)
        spin_pause();
    pthread_mutex_lock(&pool.lock);
    while (pool.pending > 0)
        pthread_cond_wait(&pool.done, &pool.lock);
    pool.busy = 0;
    pool.jobs = NULL;
    pthread_mutex_unlock(&pool.lock);
    return 1;
}

peftc_status peftc_parallel_run(peftc_part_fn fn, void *ctx, int64_t nparts)
{
    if (nparts < 1 || nparts > PEFTC_MAX_THREADS)
        return PEFTC_ERR_ARG;
    part_job jobs[PEFTC_MAX_THREADS];
    for (int64_t t = 0; t < nparts; t++)
        jobs[t] = (part_job){fn, ctx, t, nparts, PEFTC_OK};
    if (nparts == 1)
        run_part(&jobs[0]);
    else if (!run_pooled(jobs, nparts))
        run_spawned(jobs, nparts);
    for (int64_t t = 0; t < nparts; t++)
        if (jobs[t].status != PEFTC_OK)
            return jobs[t].status;
    return PEFTC_OK;
}

peftc_status peftc_parallel_run_blas(peftc_part_fn fn, void *ctx, int64_t nparts)
{
    peftc_blas_single_thread_begin();
    const peftc_status st = peftc_parallel_run(fn, ctx, nparts);
    peftc_blas_single_thread_end();
    return st;
}
