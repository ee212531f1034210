/*
 * Gloo peer of ringbench: times gloo::allreduce (TCP transport, ring algorithm, float sum,
 * in place) over a sweep of sizes and prints the same nccl-tests style table (rank 0 prints).
 * gloo::allreduce with the ring algorithm is what PyTorch's Gloo process group runs for a dense
 * CPU all-reduce.
 *
 * Build: g++ -O3 -std=c++17 -o target/peers/gloo_allreduce scripts/peers/gloo_allreduce.cc \
 *          -lgloo -lpthread
 * Run one process per rank; they meet through a FileStore directory (shared file system):
 *   d=$(mktemp -d); for r in 0 1; do
 *     target/peers/gloo_allreduce --rank $r --size 2 --store $d -b 4K -e 256M & done; wait
 * Rank and size may also come from RANK/WORLD_SIZE or OMPI_COMM_WORLD_RANK/SIZE (so mpirun can
 * serve as a plain launcher). --host is the address this rank listens on (default 127.0.0.1).
 */
#include <gloo/allreduce.h>
#include <gloo/barrier.h>
#include <gloo/math.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/file_store.h>
#include <gloo/transport/tcp/device.h>

#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "bench_common.h"

namespace {

using Clock = std::chrono::steady_clock;

struct GlooArgs {
  int rank = -1;
  int size = -1;
  std::string host = "127.0.0.1";
  std::string store;
  std::string algo = "ring";
  int timeout_s = 600;
};

int is_gloo_flag(const char *flag) {
  static const char *const kFlags[] = {"--rank", "--size", "--host", "--store", "--algo",
                                       "--timeout-s"};
  for (const char *known : kFlags)
    if (std::strcmp(flag, known) == 0) return 1;
  return 0;
}

int env_int(const char *a, const char *b) {
  const char *text = std::getenv(a);
  if (text == nullptr) text = std::getenv(b);
  int value = -1;
  if (text == nullptr || bench_parse_int(text, 0, 1 << 20, &value) != 0) return -1;
  return value;
}

// Reads the Gloo-only flags (the shared ones are parsed by bench_parse_opts). Returns false
// after printing why the arguments are wrong.
bool parse_gloo_args(int argc, char **argv, GlooArgs *out) {
  for (int i = 1; i + 1 < argc; i++) {
    const std::string flag = argv[i];
    if (!is_gloo_flag(flag.c_str())) continue;
    const char *value = argv[++i];
    bool ok = true;
    if (flag == "--rank") ok = bench_parse_int(value, 0, 1 << 20, &out->rank) == 0;
    else if (flag == "--size") ok = bench_parse_int(value, 1, 1 << 20, &out->size) == 0;
    else if (flag == "--timeout-s") ok = bench_parse_int(value, 1, 86400, &out->timeout_s) == 0;
    else if (flag == "--host") out->host = value;
    else if (flag == "--store") out->store = value;
    else if (flag == "--algo") out->algo = value;
    if (!ok) {
      std::fprintf(stderr, "%s: bad value for %s: %s\n", argv[0], flag.c_str(), value);
      return false;
    }
  }
  if (out->rank < 0) out->rank = env_int("RANK", "OMPI_COMM_WORLD_RANK");
  if (out->size < 0) out->size = env_int("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE");
  if (out->store.empty() && std::getenv("GLOO_STORE_DIR") != nullptr)
    out->store = std::getenv("GLOO_STORE_DIR");
  if (out->rank < 0 || out->size < 1 || out->rank >= out->size || out->store.empty()) {
    std::fprintf(stderr, "%s: need --rank R --size N (0 <= R < N) and --store DIR\n", argv[0]);
    return false;
  }
  if (out->algo != "ring" && out->algo != "bcube") {
    std::fprintf(stderr, "%s: --algo must be ring or bcube\n", argv[0]);
    return false;
  }
  return true;
}

using ReduceFn = void (*)(void *, const void *, const void *, size_t);

template <typename T>
void all_reduce(const std::shared_ptr<gloo::Context> &ctx, T *data, size_t count, ReduceFn fn,
                gloo::AllreduceOptions::Algorithm algo) {
  gloo::AllreduceOptions opts(ctx);
  opts.setAlgorithm(algo);
  opts.setOutput(data, count);
  opts.setReduceFunction(fn);
  gloo::allreduce(opts);
}

struct Bench {
  std::shared_ptr<gloo::Context> ctx;
  gloo::AllreduceOptions::Algorithm algo;
  bench_opts opts;
  std::vector<float> buf;
  std::vector<double> iter_s;
};

// Runs one size and prints its row on rank 0. Returns busbw (rank 0) and adds to *wrong_total.
double run_size(Bench &b, uint64_t bytes, uint64_t *wrong_total) {
  const int rank = b.ctx->rank, world = b.ctx->size;
  const size_t count = bytes / sizeof(float);
  float *data = b.buf.data();
  const ReduceFn sum_f = &gloo::sum<float>;
  bench_fill(data, count, rank);
  for (int i = 0; i < b.opts.warmup_iters; i++) all_reduce(b.ctx, data, count, sum_f, b.algo);
  gloo::BarrierOptions barrier(b.ctx);
  gloo::barrier(barrier);
  b.iter_s[b.opts.iters] = 0.0;
  for (int i = 0; i < b.opts.iters; i++) {
    const auto start = Clock::now();
    all_reduce(b.ctx, data, count, sum_f, b.algo);
    b.iter_s[i] = std::chrono::duration<double>(Clock::now() - start).count();
    b.iter_s[b.opts.iters] += b.iter_s[i];
  }
  // Iteration i took as long as its slowest rank; the last slot: the slowest rank's total.
  const ReduceFn max_d = &gloo::max<double>;
  all_reduce(b.ctx, b.iter_s.data(), b.iter_s.size(), max_d, b.algo);
  int64_t wrong = -1;
  if (b.opts.check) {
    bench_fill(data, count, rank);
    all_reduce(b.ctx, data, count, sum_f, b.algo);
    // Counts stay far below 2^53, so a double sum of them is exact.
    double wrong_all = (double)bench_count_wrong(data, count, world);
    const ReduceFn sum_d = &gloo::sum<double>;
    all_reduce(b.ctx, &wrong_all, 1, sum_d, b.algo);
    wrong = (int64_t)wrong_all;
    *wrong_total += (uint64_t)wrong;
  }
  if (rank != 0) return 0.0;
  return bench_print_row(bytes, world, b.iter_s.data(), b.opts.iters, wrong);
}

}  // namespace

int main(int argc, char **argv) {
  Bench b;
  GlooArgs args;
  if (bench_parse_opts(argc, argv, &b.opts, is_gloo_flag) != 0 ||
      !parse_gloo_args(argc, argv, &args)) {
    bench_usage(stderr, argv[0],
                " --rank R --size N --store DIR [--host ADDR] [--algo ring|bcube] [--timeout-s S]");
    return 2;
  }
  if ((long long)args.size * BENCH_PATTERN_PERIOD >= (1LL << 24)) {
    std::fprintf(stderr, "%s: world too large for an exact float check\n", argv[0]);
    return 2;
  }
  b.algo = args.algo == "ring" ? gloo::AllreduceOptions::Algorithm::RING
                               : gloo::AllreduceOptions::Algorithm::BCUBE;
  b.buf.resize(b.opts.max_bytes / sizeof(float));
  b.iter_s.resize((size_t)b.opts.iters + 1);

  gloo::transport::tcp::attr attr;
  attr.hostname = args.host;
  auto dev = gloo::transport::tcp::CreateDevice(attr);
  gloo::rendezvous::FileStore store(args.store);
  auto ctx = std::make_shared<gloo::rendezvous::Context>(args.rank, args.size);
  ctx->setTimeout(std::chrono::seconds(args.timeout_s));
  ctx->connectFullMesh(store, dev);
  b.ctx = ctx;

  if (args.rank == 0) {
    const std::string what = "Gloo gloo::allreduce (tcp, " + args.algo + ")";
    bench_print_header(what.c_str(), args.size, &b.opts);
  }
  uint64_t wrong_total = 0;
  double busbw_sum = 0.0;
  int rows = 0;
  for (uint64_t size = b.opts.min_bytes; size <= b.opts.max_bytes; size *= b.opts.factor) {
    busbw_sum += run_size(b, size / sizeof(float) * sizeof(float), &wrong_total);
    rows++;
  }
  if (args.rank == 0) bench_print_footer(wrong_total, busbw_sum, rows);
  gloo::BarrierOptions barrier(b.ctx);
  gloo::barrier(barrier);
  return wrong_total == 0 ? 0 : 1;
}
