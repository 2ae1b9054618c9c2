// A standalone NCCL all-reduce sweep for a GPU machine where meshtrain itself cannot be built
// (no MPI, no Kokkos): one process drives every device it uses through ncclCommInitAll.
// Prints nccl-tests' columns (size, count, type, redop, time, algbw, busbw, #wrong), where
// algbw = bytes / time and busbw = algbw * 2(n-1)/n, and checks every result.
//
// Build: g++ -std=c++17 -I/usr/local/cuda/include nccl_sweep.cpp -L/usr/local/cuda/lib64
//        -lnccl -lcudart -o nccl_sweep
// Run:   nccl_sweep [--devices N] [--min-bytes B] [--max-bytes B] [--warmup N] [--iters N]
//                   [--json FILE]
// Without a visible GPU it says so and exits with 0: there is nothing to measure.
#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

void fail(const char* call, const char* file, int line, const std::string& what) {
  std::fprintf(stderr, "nccl_sweep: %s failed at %s:%d: %s\n", call, file, line, what.c_str());
  std::exit(1);
}

#define CHECK_CUDA(call)                                                             \
  do {                                                                               \
    const cudaError_t status_ = (call);                                              \
    if (status_ != cudaSuccess) {                                                    \
      fail(#call, __FILE__, __LINE__,                                                \
           std::string("code ") + std::to_string(static_cast<int>(status_)) + " (" + \
               cudaGetErrorName(status_) + "): " + cudaGetErrorString(status_));     \
    }                                                                                \
  } while (0)

#define CHECK_NCCL(call)                                                             \
  do {                                                                               \
    const ncclResult_t status_ = (call);                                             \
    if (status_ != ncclSuccess) {                                                    \
      fail(#call, __FILE__, __LINE__,                                                \
           std::string("code ") + std::to_string(static_cast<int>(status_)) + ": " + \
               ncclGetErrorString(status_));                                         \
    }                                                                                \
  } while (0)

struct Options {
  int devices = 1;
  std::size_t min_bytes = 8;
  std::size_t max_bytes = std::size_t{256} << 20;
  int warmup = 5;
  int iters = 20;
  std::string json_path;
};

Options parse(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) {
      std::fprintf(stderr, "nccl_sweep: %s needs a value\n", flag.c_str());
      std::exit(2);
    }
    const char* value = argv[++i];
    if (flag == "--devices") {
      options.devices = std::atoi(value);
    } else if (flag == "--min-bytes") {
      options.min_bytes = std::strtoull(value, nullptr, 10);
    } else if (flag == "--max-bytes") {
      options.max_bytes = std::strtoull(value, nullptr, 10);
    } else if (flag == "--warmup") {
      options.warmup = std::atoi(value);
    } else if (flag == "--iters") {
      options.iters = std::atoi(value);
    } else if (flag == "--json") {
      options.json_path = value;
    } else {
      std::fprintf(stderr, "nccl_sweep: unknown flag %s\n", flag.c_str());
      std::exit(2);
    }
  }
  if (options.devices < 1 || options.iters < 1 || options.warmup < 0 ||
      options.min_bytes < sizeof(float) || options.max_bytes < options.min_bytes) {
    std::fprintf(stderr,
                 "nccl_sweep: bad options (need devices >= 1, iters >= 1, "
                 "4 <= min-bytes <= max-bytes)\n");
    std::exit(2);
  }
  return options;
}

// Device d contributes (i % 13) + d + 1 to element i: small integers, so every sum is exact.
float contribution(std::size_t i, int device) { return static_cast<float>(i % 13 + device + 1); }

struct Row {
  std::size_t bytes;
  std::size_t count;
  double time_us;
  double algbw;
  double busbw;
  std::size_t wrong;
};

}  // namespace

int main(int argc, char** argv) {
  const Options options = parse(argc, argv);

  int visible = 0;
  const cudaError_t count_status = cudaGetDeviceCount(&visible);
  if (count_status != cudaSuccess || visible == 0) {
    std::printf("nccl_sweep: no CUDA device is visible (%s); nothing to measure\n",
                count_status == cudaSuccess ? "cudaGetDeviceCount found 0"
                                            : cudaGetErrorString(count_status));
    return 0;
  }
  const int n = std::min(options.devices, visible);
  if (n < options.devices) {
    std::printf("nccl_sweep: %d device(s) asked for, %d visible: using %d\n", options.devices,
                visible, n);
  }

  int nccl_version = 0;
  CHECK_NCCL(ncclGetVersion(&nccl_version));
  int runtime_version = 0;
  CHECK_CUDA(cudaRuntimeGetVersion(&runtime_version));
  cudaDeviceProp properties{};
  CHECK_CUDA(cudaGetDeviceProperties(&properties, 0));
  std::printf("# nccl_sweep: NCCL %d, CUDA runtime %d, %d x %s, ncclCommInitAll, one process\n",
              nccl_version, runtime_version, n, properties.name);

  std::vector<int> device_list(n);
  for (int d = 0; d < n; ++d) device_list[d] = d;
  std::vector<ncclComm_t> comms(n);
  CHECK_NCCL(ncclCommInitAll(comms.data(), n, device_list.data()));

  const std::size_t max_count = options.max_bytes / sizeof(float);
  std::vector<float*> send(n), recv(n);
  std::vector<cudaStream_t> streams(n);
  std::vector<float> host(max_count);
  for (int d = 0; d < n; ++d) {
    CHECK_CUDA(cudaSetDevice(d));
    CHECK_CUDA(cudaStreamCreateWithFlags(&streams[d], cudaStreamNonBlocking));
    CHECK_CUDA(cudaMalloc(&send[d], max_count * sizeof(float)));
    CHECK_CUDA(cudaMalloc(&recv[d], max_count * sizeof(float)));
    for (std::size_t i = 0; i < max_count; ++i) host[i] = contribution(i, d);
    CHECK_CUDA(cudaMemcpy(send[d], host.data(), max_count * sizeof(float), cudaMemcpyHostToDevice));
  }

  const auto run_once = [&](std::size_t count) {
    CHECK_NCCL(ncclGroupStart());
    for (int d = 0; d < n; ++d) {
      CHECK_NCCL(
          ncclAllReduce(send[d], recv[d], count, ncclFloat32, ncclSum, comms[d], streams[d]));
    }
    CHECK_NCCL(ncclGroupEnd());
  };
  const auto synchronize = [&] {
    for (int d = 0; d < n; ++d) {
      CHECK_CUDA(cudaSetDevice(d));
      CHECK_CUDA(cudaStreamSynchronize(streams[d]));
    }
  };

  std::printf("#%14s %12s %8s %6s %12s %8s %8s %8s\n", "size(B)", "count", "type", "redop",
              "time(us)", "algbw", "busbw", "#wrong");
  std::printf("#%14s %12s %8s %6s %12s %8s %8s %8s\n", "", "(elements)", "", "", "", "(GB/s)",
              "(GB/s)", "");
  std::vector<Row> rows;
  std::size_t total_wrong = 0;
  for (std::size_t bytes = options.min_bytes; bytes <= options.max_bytes; bytes *= 2) {
    const std::size_t count = bytes / sizeof(float);
    for (int i = 0; i < options.warmup; ++i) run_once(count);
    synchronize();
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < options.iters; ++i) run_once(count);
    synchronize();
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() /
        options.iters;

    std::size_t wrong = 0;
    for (int d = 0; d < n; ++d) {
      CHECK_CUDA(cudaSetDevice(d));
      CHECK_CUDA(cudaMemcpy(host.data(), recv[d], count * sizeof(float), cudaMemcpyDeviceToHost));
      for (std::size_t i = 0; i < count; ++i) {
        float expected = 0;
        for (int q = 0; q < n; ++q) expected += contribution(i, q);
        if (host[i] != expected) ++wrong;
      }
    }
    total_wrong += wrong;

    const double algbw = static_cast<double>(count * sizeof(float)) / seconds / 1e9;
    const double busbw = algbw * 2.0 * (n - 1) / n;
    rows.push_back({count * sizeof(float), count, seconds * 1e6, algbw, busbw, wrong});
    std::printf(" %14zu %12zu %8s %6s %12.2f %8.2f %8.2f %8zu\n", count * sizeof(float), count,
                "float", "sum", seconds * 1e6, algbw, busbw, wrong);
    std::fflush(stdout);
  }
  if (n == 1) std::printf("# one device: busbw is 0 by definition (2(n-1)/n = 0)\n");
  std::printf("# %s: %zu wrong element(s) in total\n", total_wrong == 0 ? "OK" : "FAILED",
              total_wrong);

  if (!options.json_path.empty()) {
    std::FILE* json = std::fopen(options.json_path.c_str(), "w");
    if (json == nullptr) {
      std::fprintf(stderr, "nccl_sweep: cannot write %s\n", options.json_path.c_str());
      return 1;
    }
    std::fprintf(json,
                 "{\"nccl_version\": %d, \"cuda_runtime_version\": %d, \"devices\": %d, "
                 "\"device_name\": \"%s\", \"type\": \"float\", \"redop\": \"sum\", "
                 "\"warmup\": %d, \"iters\": %d, \"results\": [\n",
                 nccl_version, runtime_version, n, properties.name, options.warmup, options.iters);
    for (std::size_t i = 0; i < rows.size(); ++i) {
      const Row& row = rows[i];
      std::fprintf(json,
                   "  {\"size_bytes\": %zu, \"count\": %zu, \"time_us\": %.3f, "
                   "\"algbw_gbps\": %.4f, \"busbw_gbps\": %.4f, \"wrong\": %zu}%s\n",
                   row.bytes, row.count, row.time_us, row.algbw, row.busbw, row.wrong,
                   i + 1 < rows.size() ? "," : "");
    }
    std::fprintf(json, "]}\n");
    std::fclose(json);
  }

  for (int d = 0; d < n; ++d) {
    cudaSetDevice(d);
    cudaFree(send[d]);
    cudaFree(recv[d]);
    cudaStreamDestroy(streams[d]);
    ncclCommDestroy(comms[d]);
  }
  return total_wrong == 0 ? 0 : 1;
}
