/*
 * Open MPI peer of ringbench: times MPI_Allreduce(MPI_IN_PLACE, float, MPI_SUM) over a sweep of
 * sizes and prints the same nccl-tests style table (rank 0 prints).
 *
 * Build: mpicc -O3 -o target/peers/mpi_allreduce scripts/peers/mpi_allreduce.c -lm
 * Run on loopback TCP only (no shared memory, no other transport):
 *   mpirun --allow-run-as-root --oversubscribe -np 4 --mca pml ob1 --mca btl tcp,self \
 *     --mca btl_tcp_if_include lo target/peers/mpi_allreduce -b 4K -e 256M -f 4 -n 20 -w 5 -c 1
 * scripts/bench-peers does this for you; docs/BENCHMARKS.md explains the numbers.
 */
#include <mpi.h>

#include "bench_common.h"

/* Runs one size and prints its row on rank 0. Returns busbw (rank 0) and adds to *wrong_total. */
static double run_size(const bench_opts *opts, float *buf, double *iter_s, uint64_t bytes,
                       int rank, int world, uint64_t *wrong_total) {
  int count = (int)(bytes / sizeof(float));
  bench_fill(buf, (size_t)count, rank);
  for (int i = 0; i < opts->warmup_iters; i++)
    MPI_Allreduce(MPI_IN_PLACE, buf, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
  MPI_Barrier(MPI_COMM_WORLD);
  iter_s[opts->iters] = 0.0;
  for (int i = 0; i < opts->iters; i++) {
    double start = MPI_Wtime();
    MPI_Allreduce(MPI_IN_PLACE, buf, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    iter_s[i] = MPI_Wtime() - start;
    iter_s[opts->iters] += iter_s[i];
  }
  /* Iteration i took as long as its slowest rank; the last slot: the slowest rank's total. */
  MPI_Allreduce(MPI_IN_PLACE, iter_s, opts->iters + 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  int64_t wrong = -1;
  if (opts->check) {
    bench_fill(buf, (size_t)count, rank);
    MPI_Allreduce(MPI_IN_PLACE, buf, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    unsigned long long local = bench_count_wrong(buf, (size_t)count, world), all = 0;
    MPI_Allreduce(&local, &all, 1, MPI_UNSIGNED_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
    wrong = (int64_t)all;
    *wrong_total += all;
  }
  if (rank != 0) return 0.0;
  return bench_print_row(bytes, world, iter_s, opts->iters, wrong);
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, world = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  bench_opts opts;
  if (bench_parse_opts(argc, argv, &opts, NULL) != 0) {
    if (rank == 0) bench_usage(stderr, argv[0], "");
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  if ((long long)world * BENCH_PATTERN_PERIOD >= (1LL << 24) ||
      opts.max_bytes / sizeof(float) > 2147483647ULL) {
    if (rank == 0) fprintf(stderr, "%s: world or -e too large for an exact float check\n", argv[0]);
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  float *buf = (float *)malloc(opts.max_bytes);
  double *iter_s = (double *)malloc(sizeof(double) * ((size_t)opts.iters + 1));
  if (buf == NULL || iter_s == NULL) {
    fprintf(stderr, "%s: rank %d cannot allocate %llu bytes\n", argv[0], rank,
            (unsigned long long)opts.max_bytes);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  if (rank == 0) bench_print_header("Open MPI MPI_Allreduce", world, &opts);
  uint64_t wrong_total = 0;
  double busbw_sum = 0.0;
  int rows = 0;
  for (uint64_t size = opts.min_bytes; size <= opts.max_bytes; size *= opts.factor) {
    uint64_t bytes = size / sizeof(float) * sizeof(float);
    busbw_sum += run_size(&opts, buf, iter_s, bytes, rank, world, &wrong_total);
    rows++;
  }
  if (rank == 0) bench_print_footer(wrong_total, busbw_sum, rows);
  free(iter_s);
  free(buf);
  MPI_Finalize();
  return wrong_total == 0 ? 0 : 1;
}
