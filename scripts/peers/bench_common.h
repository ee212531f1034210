/*
 * Shared pieces of the peer all-reduce benchmarks (mpi_allreduce.c, gloo_allreduce.cc):
 * flag parsing, the deterministic exact-sum test pattern, per-iteration statistics and the
 * nccl-tests style table that ringbench also prints, so scripts/bench-peers parses all three
 * programs the same way.
 *
 * Measurement contract (identical in both programs, see docs/BENCHMARKS.md):
 *   - sizes run from -b to -e, multiplied by -f each step (K/M/G = 1024^1/2/3 bytes);
 *   - -w untimed warm-up calls, a barrier, then -n calls each timed on every rank;
 *   - iteration i's time is the maximum over ranks of that rank's duration of call i;
 *     p50/p99 = nearest-rank percentiles of those n times;
 *   - time = the slowest rank's total over the n calls, divided by n (nccl-tests times a
 *     loop: a rank that returns first and waits in the next call is not counted twice);
 *   - algbw = size / time (GB = 1e9 B), busbw = algbw * 2(n-1)/n;
 *   - with -c 1 a separate, untimed call on fresh data is checked element by element.
 *
 * Written as C that also compiles as C++; everything is static so each program has its own copy.
 */
#ifndef RINGCC_PEERS_BENCH_COMMON_H
#define RINGCC_PEERS_BENCH_COMMON_H

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Largest accepted -n: per-iteration times are kept in an array of this many doubles. */
#define BENCH_ITERS_MAX 100000
/* Largest accepted -e: 4 GiB keeps the element count inside a C int (MPI's count type). */
#define BENCH_BYTES_MAX (4ULL << 30)
/* Period of the test pattern; values stay below it, so a sum over ranks is an exact float
 * integer as long as world * BENCH_PATTERN_PERIOD < 2^24. */
#define BENCH_PATTERN_PERIOD 17

typedef struct {
  uint64_t min_bytes;   /* -b */
  uint64_t max_bytes;   /* -e */
  uint64_t factor;      /* -f, >= 2 */
  int iters;            /* -n, timed calls per size */
  int warmup_iters;     /* -w, untimed calls per size */
  int check;            /* -c, 1 = verify one extra call per size */
} bench_opts;

/* Parses "4096", "4K", "64M", "1G" (binary multiples, like nccl-tests). Returns 0 on error. */
static uint64_t bench_parse_bytes(const char *text) {
  char *end = NULL;
  errno = 0;
  unsigned long long value = strtoull(text, &end, 10);
  if (errno != 0 || end == text) return 0;
  uint64_t unit = 1;
  if (*end == 'K' || *end == 'k') unit = 1ULL << 10;
  else if (*end == 'M' || *end == 'm') unit = 1ULL << 20;
  else if (*end == 'G' || *end == 'g') unit = 1ULL << 30;
  else if (*end != '\0') return 0;
  if (unit != 1 && end[1] != '\0') return 0;
  if (value > BENCH_BYTES_MAX / unit) return 0;
  return (uint64_t)value * unit;
}

static int bench_parse_int(const char *text, int lo, int hi, int *out) {
  char *end = NULL;
  errno = 0;
  long value = strtol(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0' || value < lo || value > hi) return -1;
  *out = (int)value;
  return 0;
}

static void bench_usage(FILE *to, const char *prog, const char *extra) {
  fprintf(to,
          "usage: %s [-b MINBYTES] [-e MAXBYTES] [-f FACTOR] [-n ITERS] [-w WARMUP] [-c 0|1]%s\n"
          "  sizes take K/M/G suffixes (binary); defaults: -b 4K -e 256M -f 4 -n 20 -w 5 -c 1\n",
          prog, extra);
}

/*
 * Parses the shared flags. Arguments it does not know are left for the caller: `is_extra`
 * (may be NULL) says whether argv[i] is a caller flag taking one value, which is skipped.
 * Returns 0 on success, -1 after printing why the arguments are wrong.
 */
static int bench_parse_opts(int argc, char **argv, bench_opts *opts,
                            int (*is_extra)(const char *flag)) {
  opts->min_bytes = 4096;
  opts->max_bytes = 256ULL << 20;
  opts->factor = 4;
  opts->iters = 20;
  opts->warmup_iters = 5;
  opts->check = 1;
  for (int i = 1; i < argc; i++) {
    const char *flag = argv[i];
    if (is_extra != NULL && is_extra(flag)) {
      i++;
      continue;
    }
    if (i + 1 >= argc) {
      fprintf(stderr, "%s: unknown flag or missing value: %s\n", argv[0], flag);
      return -1;
    }
    const char *value = argv[++i];
    int ok = 0;
    if (strcmp(flag, "-b") == 0) ok = (opts->min_bytes = bench_parse_bytes(value)) != 0;
    else if (strcmp(flag, "-e") == 0) ok = (opts->max_bytes = bench_parse_bytes(value)) != 0;
    else if (strcmp(flag, "-f") == 0) {
      int f = 0;
      ok = bench_parse_int(value, 2, 1024, &f) == 0;
      opts->factor = (uint64_t)f;
    } else if (strcmp(flag, "-n") == 0) ok = bench_parse_int(value, 1, BENCH_ITERS_MAX, &opts->iters) == 0;
    else if (strcmp(flag, "-w") == 0) ok = bench_parse_int(value, 0, BENCH_ITERS_MAX, &opts->warmup_iters) == 0;
    else if (strcmp(flag, "-c") == 0) ok = bench_parse_int(value, 0, 1, &opts->check) == 0;
    else {
      fprintf(stderr, "%s: unknown flag %s\n", argv[0], flag);
      return -1;
    }
    if (!ok) {
      fprintf(stderr, "%s: bad value for %s: %s\n", argv[0], flag, value);
      return -1;
    }
  }
  if (opts->min_bytes < sizeof(float) || opts->min_bytes > opts->max_bytes) {
    fprintf(stderr, "%s: need 4 <= -b <= -e\n", argv[0]);
    return -1;
  }
  return 0;
}

/* Value rank `rank` contributes at element `elem`: a small integer, so every sum is exact. */
static inline float bench_pattern(int rank, size_t elem) {
  return (float)((elem + 3u * (size_t)rank) % BENCH_PATTERN_PERIOD);
}

static void bench_fill(float *buf, size_t count, int rank) {
  for (size_t i = 0; i < count; i++) buf[i] = bench_pattern(rank, i);
}

/* Number of elements that differ from the exact sum of every rank's pattern. */
static uint64_t bench_count_wrong(const float *buf, size_t count, int world) {
  uint64_t wrong = 0;
  for (size_t i = 0; i < count; i++) {
    float expected = 0.0f;
    for (int r = 0; r < world; r++) expected += bench_pattern(r, i);
    if (buf[i] != expected) wrong++;
  }
  return wrong;
}

static int bench_cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Nearest-rank percentile of `sorted` (ascending, n >= 1), pct in (0, 100]. */
static double bench_percentile(const double *sorted, int n, double pct) {
  int rank = (int)ceil(pct / 100.0 * n);
  if (rank < 1) rank = 1;
  if (rank > n) rank = n;
  return sorted[rank - 1];
}

/* Formats microseconds the way nccl-tests does: fewer decimals as the number grows. */
static void bench_format_us(char *out, size_t len, double us) {
  if (us >= 10000.0) snprintf(out, len, "%7.0f", us);
  else if (us >= 100.0) snprintf(out, len, "%7.1f", us);
  else snprintf(out, len, "%7.2f", us);
}

static void bench_print_header(const char *what, int world, const bench_opts *o) {
  printf("# %s: world %d, -b %llu -e %llu -f %llu -n %d -w %d -c %d\n", what, world,
         (unsigned long long)o->min_bytes, (unsigned long long)o->max_bytes,
         (unsigned long long)o->factor, o->iters, o->warmup_iters, o->check);
  printf("#       size         count      type   redop    root     time   algbw   busbw  #wrong"
         "      p50      p99\n");
  printf("#        (B)    (elements)                               (us)  (GB/s)  (GB/s)      "
         "        (us)     (us)\n");
}

/*
 * Prints one row from the per-iteration times (seconds, already the max over ranks; sorted
 * in place) followed by iter_s[n], the slowest rank's total over the n calls. Returns busbw
 * in GB/s so the caller can average it for the footer.
 * `wrong` < 0 means the check was off and prints as N/A, as nccl-tests does.
 */
static double bench_print_row(uint64_t bytes, int world, double *iter_s, int n, int64_t wrong) {
  double mean_us = iter_s[n] / n * 1e6;
  qsort(iter_s, (size_t)n, sizeof(double), bench_cmp_double);
  double algbw = mean_us > 0.0 ? (double)bytes / (mean_us * 1e-6) / 1e9 : 0.0;
  double busbw = algbw * 2.0 * (world - 1) / world;
  char time_str[32], p50_str[32], p99_str[32], wrong_str[32];
  bench_format_us(time_str, sizeof time_str, mean_us);
  bench_format_us(p50_str, sizeof p50_str, bench_percentile(iter_s, n, 50.0) * 1e6);
  bench_format_us(p99_str, sizeof p99_str, bench_percentile(iter_s, n, 99.0) * 1e6);
  if (wrong < 0) snprintf(wrong_str, sizeof wrong_str, "N/A");
  else snprintf(wrong_str, sizeof wrong_str, "%lld", (long long)wrong);
  printf("%12llu  %12llu  %8s  %6s  %6d  %7s  %6.2f  %6.2f  %6s  %7s  %7s\n",
         (unsigned long long)bytes, (unsigned long long)(bytes / sizeof(float)), "float", "sum",
         -1, time_str, algbw, busbw, wrong_str, p50_str, p99_str);
  fflush(stdout);
  return busbw;
}

static void bench_print_footer(uint64_t wrong_total, double busbw_sum, int rows) {
  printf("# Out of bounds values : %llu %s\n", (unsigned long long)wrong_total,
         wrong_total == 0 ? "OK" : "FAILED");
  printf("# Avg bus bandwidth    : %.3f\n", rows > 0 ? busbw_sum / rows : 0.0);
  fflush(stdout);
}

#endif
