// NcclCommunicator against MpiCommunicator on the same data, at whatever rank count the test
// is launched with. Every test that needs a GPU skips, with the reason, when this node has
// none, or fewer than one per rank; the ranks agree on skipping, so none is left waiting in
// a collective. The error-text and timeout-parsing tests need no GPU.
#include <gtest/gtest.h>
#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "meshtrain/comm/backend.hpp"
#include "meshtrain/comm/flight_recorder.hpp"
#include "comm/nccl_check.hpp"
#include "meshtrain/comm/mpi_communicator.hpp"
#include "meshtrain/comm/nccl_communicator.hpp"
#include "meshtrain/error.hpp"

using namespace meshtrain;
using namespace std::chrono_literals;

namespace {

// count elements of device memory, freed on destruction.
template <class T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(std::size_t count) : count_(count) {
    impl::check_cuda(
        cudaMalloc(reinterpret_cast<void**>(&data_), std::max<std::size_t>(count, 1) * sizeof(T)),
        "cudaMalloc", -1);
  }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) {
    impl::check_cuda(
        cudaMemcpy(data_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice),
        "cudaMemcpy", -1);
  }
  ~DeviceBuffer() { cudaFree(data_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  T* data() { return data_; }
  std::vector<T> to_host() const {
    std::vector<T> host(count_);
    impl::check_cuda(cudaMemcpy(host.data(), data_, count_ * sizeof(T), cudaMemcpyDeviceToHost),
                     "cudaMemcpy", -1);
    return host;
  }

 private:
  T* data_ = nullptr;
  std::size_t count_;
};

// Small integers that depend on the rank and the element: sums of them are exact in any
// order, so every backend must agree bit for bit (averages of floats aside, see below).
template <class T>
std::vector<T> rank_values(std::size_t count, int rank, int salt, bool non_negative = false) {
  std::vector<T> values(count);
  for (std::size_t i = 0; i < count; ++i) {
    const int base = static_cast<int>((i * 7 + static_cast<std::size_t>(salt)) % 23);
    values[i] = static_cast<T>(non_negative ? base + 3 * rank : base - 11 + 5 * rank);
  }
  return values;
}

// Exact for integers; for floating point, within a few ulps, since NCCL's average multiplies
// by 1/n before summing where MPI divides the sum.
template <class T>
void expect_matches(const std::vector<T>& actual, const std::vector<T>& expected,
                    const std::string& what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  std::size_t mismatches = 0;
  std::size_t first = 0;
  for (std::size_t i = 0; i < actual.size(); ++i) {
    bool equal = actual[i] == expected[i];
    if constexpr (std::is_floating_point_v<T>) {
      const double tolerance = 4 * std::numeric_limits<T>::epsilon() *
                               std::max(1.0, std::abs(static_cast<double>(expected[i])));
      equal =
          std::abs(static_cast<double>(actual[i]) - static_cast<double>(expected[i])) <= tolerance;
    }
    if (!equal && mismatches++ == 0) first = i;
  }
  EXPECT_EQ(mismatches, 0u) << what << ": first mismatch at element " << first << ": nccl "
                            << +actual[first] << ", mpi " << +expected[first];
}

// Why the NCCL tests cannot run here, agreed by every rank; empty when they can.
std::string reason_to_skip() {
  const int gpus = visible_gpu_count();
  MPI_Comm node = MPI_COMM_NULL;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
  int local_ranks = 1;
  MPI_Comm_size(node, &local_ranks);
  MPI_Comm_free(&node);
  const int runnable_here = gpus > 0 && local_ranks <= gpus ? 1 : 0;
  int runnable_everywhere = 0;
  MPI_Allreduce(&runnable_here, &runnable_everywhere, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (runnable_everywhere) return "";
  if (gpus == 0) return "no GPU is visible on this node (visible_gpu_count() == 0)";
  if (local_ranks > gpus) {
    return std::to_string(local_ranks) + " ranks on this node share " + std::to_string(gpus) +
           " GPU(s); NCCL needs one GPU per rank";
  }
  return "another node has fewer GPUs than ranks";
}

int local_rank() {
  MPI_Comm node = MPI_COMM_NULL;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
  int rank = 0;
  MPI_Comm_rank(node, &rank);
  MPI_Comm_free(&node);
  return rank;
}

struct NcclVsMpi : ::testing::Test {
  void SetUp() override {
    const std::string reason = reason_to_skip();
    if (!reason.empty()) GTEST_SKIP() << reason;
    impl::check_cuda(cudaSetDevice(local_rank()), "cudaSetDevice", -1);
    mpi = std::make_unique<MpiCommunicator>(MPI_COMM_WORLD);
    nccl = std::make_unique<NcclCommunicator>(MPI_COMM_WORLD);
    r = mpi->rank();
    n = mpi->size();
  }

  template <class T>
  void check_allreduce(ReduceOp op, std::size_t count) {
    const bool non_negative = std::is_integral_v<T> && op == ReduceOp::Average;
    std::vector<T> expected = rank_values<T>(count, r, 1, non_negative);
    DeviceBuffer<T> device(expected);
    mpi->allreduce(expected.data(), count, data_type_of<T>(), op);
    nccl->allreduce(device.data(), count, data_type_of<T>(), op);
    expect_matches(device.to_host(), expected,
                   std::string("allreduce ") + std::string(name_of(op)) + " " +
                       std::string(name_of(data_type_of<T>())));
  }

  std::unique_ptr<MpiCommunicator> mpi;
  std::unique_ptr<NcclCommunicator> nccl;
  int r = 0;
  int n = 1;
};

}  // namespace

TEST_F(NcclVsMpi, AllreduceEveryOpAndType) {
  EXPECT_EQ(nccl->backend(), "nccl");
  EXPECT_EQ(nccl->rank(), mpi->rank());
  EXPECT_EQ(nccl->size(), mpi->size());
  for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Average, ReduceOp::Max, ReduceOp::Min}) {
    check_allreduce<float>(op, 1037);
    check_allreduce<double>(op, 1037);
    check_allreduce<std::int32_t>(op, 1037);
    check_allreduce<std::int64_t>(op, 1037);
  }
  check_allreduce<float>(ReduceOp::Sum, 1);
  check_allreduce<float>(ReduceOp::Sum, 0);
}

TEST_F(NcclVsMpi, AsyncAllreducesInFlightTogether) {
  const std::size_t count = 4099;
  std::vector<std::vector<float>> expected;
  std::vector<std::unique_ptr<DeviceBuffer<float>>> device;
  std::vector<std::unique_ptr<Work>> works;
  for (int salt = 0; salt < 3; ++salt) {
    expected.push_back(rank_values<float>(count, r, salt));
    device.push_back(std::make_unique<DeviceBuffer<float>>(expected.back()));
    works.push_back(
        nccl->allreduce_async(device.back()->data(), count, DataType::Float32, ReduceOp::Average));
  }
  for (auto& values : expected)
    mpi->allreduce(values.data(), count, DataType::Float32, ReduceOp::Average);
  for (int i = 2; i >= 0; --i) {  // in any order
    works[i]->wait();
    EXPECT_TRUE(works[i]->test());
    expect_matches(device[i]->to_host(), expected[i], "async allreduce " + std::to_string(i));
  }
  while (!works[0]->test()) {
  }
}

TEST_F(NcclVsMpi, DroppedWorkHandleStillCompletes) {
  std::vector<double> expected = rank_values<double>(513, r, 4);
  DeviceBuffer<double> device(expected);
  nccl->allreduce_async(device.data(), expected.size(), DataType::Float64, ReduceOp::Sum).reset();
  mpi->allreduce(expected.data(), expected.size(), DataType::Float64, ReduceOp::Sum);
  expect_matches(device.to_host(), expected, "dropped async allreduce");
}

// The flight recorder over the NCCL path: the same decorator as on MPI groups records the
// host's enqueue and completion times of blocking and non-blocking NCCL collectives and passes
// the data through unchanged.
TEST_F(NcclVsMpi, FlightRecorderRecordsNcclCollectives) {
  auto recorder = std::make_shared<FlightRecorder>(16, r, n);
  const int group = recorder->add_group("data", 0, n, r);
  FlightRecordingCommunicator comm(std::make_shared<NcclCommunicator>(MPI_COMM_WORLD), recorder,
                                   group);
  const std::vector<float> host = rank_values<float>(386, r, 3);
  std::vector<float> expected = host;
  mpi->allreduce(expected.data(), expected.size(), DataType::Float32, ReduceOp::Sum);
  DeviceBuffer<float> blocking(host), async(host);
  comm.allreduce(blocking.data(), host.size(), DataType::Float32, ReduceOp::Sum);
  auto work = comm.allreduce_async(async.data(), host.size(), DataType::Float32, ReduceOp::Sum);
  work->wait();
  work.reset();
  expect_matches(blocking.to_host(), expected, "recorded allreduce");
  expect_matches(async.to_host(), expected, "recorded allreduce_async");
  const std::string path = "/tmp/meshtrain-nccl-flight-" + std::to_string(::getpid()) + ".bin";
  recorder->write_copy(path);
  const FlightDump dump = read_flight_dump(path);
  std::remove(path.c_str());
  ASSERT_EQ(dump.records.size(), 2u);
  for (std::size_t i = 0; i < 2; ++i) {
    const flight::Record& rec = dump.records[i];
    EXPECT_EQ(rec.sequence, i + 1);
    EXPECT_EQ(rec.op, static_cast<int>(i == 0 ? FlightOp::Allreduce : FlightOp::AllreduceAsync));
    EXPECT_EQ(rec.count, 386u);
    EXPECT_EQ(rec.bytes, 386u * 4);
    EXPECT_GT(rec.enqueue_ns, 0);
    EXPECT_GE(rec.start_ns, rec.enqueue_ns);
    EXPECT_GE(rec.end_ns, rec.start_ns);  // completed
  }
}

TEST_F(NcclVsMpi, ReduceScatter) {
  const std::size_t count = 257;
  for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Average, ReduceOp::Max, ReduceOp::Min}) {
    const std::vector<float> send = rank_values<float>(count * n, r, 2);
    std::vector<float> expected(count);
    mpi->reduce_scatter(send.data(), expected.data(), count, DataType::Float32, op);
    DeviceBuffer<float> device_send(send);
    DeviceBuffer<float> device_recv(count);
    nccl->reduce_scatter(device_send.data(), device_recv.data(), count, DataType::Float32, op);
    expect_matches(device_recv.to_host(), expected, "reduce_scatter " + std::string(name_of(op)));
  }
}

TEST_F(NcclVsMpi, AllGather) {
  const std::size_t count = 301;
  const std::vector<std::int64_t> send = rank_values<std::int64_t>(count, r, 3);
  std::vector<std::int64_t> expected(count * n);
  mpi->all_gather(send.data(), expected.data(), count, DataType::Int64);
  DeviceBuffer<std::int64_t> device_send(send);
  DeviceBuffer<std::int64_t> device_recv(count * n);
  nccl->all_gather(device_send.data(), device_recv.data(), count, DataType::Int64);
  expect_matches(device_recv.to_host(), expected, "all_gather");
}

TEST_F(NcclVsMpi, BroadcastFromEveryRoot) {
  for (int root = 0; root < n; ++root) {
    std::vector<double> expected = rank_values<double>(77, r, root);
    DeviceBuffer<double> device(expected);
    mpi->broadcast(expected.data(), expected.size(), DataType::Float64, root);
    nccl->broadcast(device.data(), expected.size(), DataType::Float64, root);
    expect_matches(device.to_host(), expected, "broadcast from root " + std::to_string(root));
  }
}

TEST_F(NcclVsMpi, ScattervUnevenCountsFromEveryRoot) {
  // Rank q gets 3(q + 1) elements, except the last rank of several, which gets none.
  std::vector<int> counts(n), displs(n);
  int total = 0;
  for (int q = 0; q < n; ++q) {
    counts[q] = (n > 1 && q == n - 1) ? 0 : 3 * (q + 1);
    displs[q] = total;
    total += counts[q];
  }
  for (int root = 0; root < n; ++root) {
    const std::vector<float> send = rank_values<float>(static_cast<std::size_t>(total), r, root);
    std::vector<float> expected(counts[r]);
    mpi->scatterv(send.data(), counts, displs, expected.data(), counts[r], DataType::Float32, root);
    DeviceBuffer<float> device_send(send);
    DeviceBuffer<float> device_recv(counts[r]);
    nccl->scatterv(device_send.data(), counts, displs, device_recv.data(), counts[r],
                   DataType::Float32, root);
    expect_matches(device_recv.to_host(), expected, "scatterv from root " + std::to_string(root));
  }
}

TEST_F(NcclVsMpi, BarrierAndSequenceNumbers) {
  const std::uint64_t before = nccl->collectives_started();
  nccl->barrier();
  nccl->barrier();
  EXPECT_EQ(nccl->collectives_started(), before + 2);
}

TEST_F(NcclVsMpi, Allreduce256MiB) {
  const std::size_t count = std::size_t{256} << 20 >> 2;  // 256 MiB of float
  std::vector<float> expected = rank_values<float>(count, r, 5);
  DeviceBuffer<float> device(expected);
  mpi->allreduce(expected.data(), count, DataType::Float32, ReduceOp::Sum);
  const auto start = std::chrono::steady_clock::now();
  nccl->allreduce(device.data(), count, DataType::Float32, ReduceOp::Sum);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  expect_matches(device.to_host(), expected, "allreduce 256 MiB");
  if (r == 0) std::printf("allreduce of 256 MiB over %d rank(s): %.3f ms\n", n, seconds * 1e3);
}

// A collective that cannot finish within the timeout aborts the communicator with a message
// naming it, instead of hanging. The legacy default stream is held busy by a host function
// that sleeps, and every collective waits for that stream before it starts. The buffer is
// made first: its synchronous upload would otherwise wait out the sleep (as it did on an
// H100, where this test first ran on a GPU).
TEST_F(NcclVsMpi, TimeoutAbortsAndNamesTheCollective) {
  NcclCommunicator short_fuse(MPI_COMM_WORLD, 300ms);
  ASSERT_EQ(short_fuse.timeout(), 300ms);
  DeviceBuffer<float> device(std::vector<float>(16, 1.0f));
  auto sleep_two_seconds = [](void*) { std::this_thread::sleep_for(2s); };
  impl::check_cuda(cudaLaunchHostFunc(cudaStreamLegacy, sleep_two_seconds, nullptr),
                   "cudaLaunchHostFunc", r);
  try {
    short_fuse.allreduce(device.data(), 16, DataType::Float32, ReduceOp::Sum);
    ADD_FAILURE() << "expected CommError";
  } catch (const CommError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("NCCL allreduce #1 on rank"), std::string::npos) << what;
    EXPECT_NE(what.find("did not complete within 300 ms"), std::string::npos) << what;
    EXPECT_NE(what.find("aborted"), std::string::npos) << what;
  }
  try {
    short_fuse.barrier();
    ADD_FAILURE() << "expected CommError";
  } catch (const CommError& e) {
    EXPECT_NE(std::string(e.what()).find("aborted earlier"), std::string::npos) << e.what();
  }
  cudaStreamSynchronize(cudaStreamLegacy);
  MPI_Barrier(MPI_COMM_WORLD);
}

TEST_F(NcclVsMpi, TimeoutFromTheEnvironment) {
  setenv(kNcclTimeoutEnv, "12345", 1);
  NcclCommunicator from_env(MPI_COMM_WORLD);
  unsetenv(kNcclTimeoutEnv);
  EXPECT_EQ(from_env.timeout(), 12345ms);
  EXPECT_EQ(nccl->timeout(), kDefaultNcclTimeout);
}

TEST(NcclTimeout, EnvironmentOverridesTheRequest) {
  EXPECT_EQ(resolve_nccl_timeout(5000ms, nullptr), 5000ms);
  EXPECT_EQ(resolve_nccl_timeout(5000ms, ""), 5000ms);
  EXPECT_EQ(resolve_nccl_timeout(5000ms, "250"), 250ms);
  EXPECT_EQ(resolve_nccl_timeout(kDefaultNcclTimeout, nullptr), std::chrono::minutes(10));
}

TEST(NcclTimeout, BadValuesAreConfigErrors) {
  for (const char* text : {"0", "-5", "abc", "10s", "1.5", " 10"}) {
    try {
      resolve_nccl_timeout(5000ms, text);
      ADD_FAILURE() << "expected ConfigError for '" << text << "'";
    } catch (const ConfigError& e) {
      EXPECT_EQ(std::string(e.what()), std::string("MESHTRAIN_NCCL_TIMEOUT_MS='") + text +
                                           "': expected a positive whole number of milliseconds");
    }
  }
  EXPECT_THROW(resolve_nccl_timeout(0ms, nullptr), ConfigError);
}

TEST(NcclCheck, ErrorNamesCallRankCodeAndText) {
  try {
    impl::check_nccl(ncclInvalidArgument, "ncclFake", 3);
    FAIL() << "expected CommError";
  } catch (const CommError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("ncclFake failed on rank 3 with code 4 (ncclInvalidArgument): "),
              std::string::npos)
        << what;
    EXPECT_NE(what.find(ncclGetErrorString(ncclInvalidArgument)), std::string::npos) << what;
  }
  EXPECT_NO_THROW(impl::check_nccl(ncclSuccess, "ncclFake", 0));
}

TEST(CudaCheck, ErrorNamesCallRankCodeAndText) {
  try {
    impl::check_cuda(cudaErrorMemoryAllocation, "cudaFake", 2);
    FAIL() << "expected CommError";
  } catch (const CommError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("cudaFake failed on rank 2 with code " +
                        std::to_string(static_cast<int>(cudaErrorMemoryAllocation)) +
                        " (cudaErrorMemoryAllocation): "),
              std::string::npos)
        << what;
    EXPECT_NE(what.find(cudaGetErrorString(cudaErrorMemoryAllocation)), std::string::npos) << what;
  }
  EXPECT_NO_THROW(impl::check_cuda(cudaSuccess, "cudaFake", 0));
}

TEST(NcclMapping, TypesAndOps) {
  EXPECT_EQ(impl::nccl_data_type(DataType::Float32), ncclFloat32);
  EXPECT_EQ(impl::nccl_data_type(DataType::Float64), ncclFloat64);
  EXPECT_EQ(impl::nccl_data_type(DataType::Int32), ncclInt32);
  EXPECT_EQ(impl::nccl_data_type(DataType::Int64), ncclInt64);
  EXPECT_EQ(impl::nccl_data_type(DataType::BFloat16), ncclBfloat16);
  EXPECT_EQ(impl::nccl_reduce_op(ReduceOp::Sum), ncclSum);
  EXPECT_EQ(impl::nccl_reduce_op(ReduceOp::Average), ncclAvg);
  EXPECT_EQ(impl::nccl_reduce_op(ReduceOp::Max), ncclMax);
  EXPECT_EQ(impl::nccl_reduce_op(ReduceOp::Min), ncclMin);
}

// Without a GPU, building the communicator fails on every rank with a CommError: no rank may
// be left waiting in the NCCL bootstrap. A rank that waited would hang this test until the
// CTest TIMEOUT; the test measures no time itself (CI machines are busy).
TEST(NcclWithoutGpu, ConstructionFailsOnEveryRank) {
  const int gpus_here = visible_gpu_count();
  int most_gpus = 0;
  MPI_Allreduce(&gpus_here, &most_gpus, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (most_gpus > 0) GTEST_SKIP() << "a GPU is visible";
  EXPECT_THROW(NcclCommunicator{MPI_COMM_WORLD}, CommError);
}
