// MPI with device buffers: the staging decorator, at whatever rank count the test runs with.
// "Device" memory is simulated: buffers registered with a DeviceMemory double, which a guard
// between the stager and MPI refuses to see, so that the staging logic is tested without a
// GPU; the results must equal MPI's on plain host buffers.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "comm/staging_communicator.hpp"
#include "meshtrain/comm/bfloat16.hpp"
#include "meshtrain/comm/mpi_communicator.hpp"
#include "meshtrain/error.hpp"

using namespace meshtrain;

namespace {

// Host vectors that stand for device memory: is_device() knows them; copies are memcpy and
// counted.
class FakeDeviceMemory final : public DeviceMemory {
 public:
  float* make(std::size_t count) {
    regions_.push_back(std::make_unique<std::vector<float>>(count));
    return regions_.back()->data();
  }
  bool is_device(const void* p) const override {
    const auto* c = static_cast<const char*>(p);
    return std::any_of(regions_.begin(), regions_.end(), [&](const auto& region) {
      const auto* begin = reinterpret_cast<const char*>(region->data());
      return c >= begin && c < begin + region->size() * sizeof(float);
    });
  }
  void* allocate_host(std::size_t bytes) override {
    ++allocations;
    return ::operator new(bytes);
  }
  void free_host(void* p) override { ::operator delete(p); }
  void to_host(void* host, const void* device, std::size_t bytes) override {
    EXPECT_TRUE(is_device(device));
    EXPECT_FALSE(is_device(host));
    std::memcpy(host, device, bytes);
    ++copies;
  }
  void to_device(void* device, const void* host, std::size_t bytes) override {
    EXPECT_TRUE(is_device(device));
    std::memcpy(device, host, bytes);
    ++copies;
  }
  int allocations = 0;
  int copies = 0;

 private:
  std::vector<std::unique_ptr<std::vector<float>>> regions_;
};

// Between the stager and MPI: fails the test when MPI would be handed "device" memory, or,
// standing for a CUDA-aware MPI (allow_device), counts the device buffers it is handed.
class HostOnlyGuard final : public Communicator {
 public:
  HostOnlyGuard(std::shared_ptr<Communicator> inner, const DeviceMemory& memory,
                bool allow_device = false)
      : inner_(std::move(inner)), memory_(memory), allow_device_(allow_device) {}
  int device_buffers_seen = 0;
  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  std::string_view backend() const override { return inner_->backend(); }
  void allreduce(void* buf, std::size_t count, DataType type, ReduceOp op) override {
    host(buf);
    inner_->allreduce(buf, count, type, op);
  }
  std::unique_ptr<Work> allreduce_async(void* buf, std::size_t count, DataType type,
                                        ReduceOp op) override {
    host(buf);
    return inner_->allreduce_async(buf, count, type, op);
  }
  void reduce_scatter(const void* send, void* recv, std::size_t count, DataType type,
                      ReduceOp op) override {
    host(send), host(recv);
    inner_->reduce_scatter(send, recv, count, type, op);
  }
  void all_gather(const void* send, void* recv, std::size_t count, DataType type) override {
    host(send), host(recv);
    inner_->all_gather(send, recv, count, type);
  }
  void broadcast(void* buf, std::size_t count, DataType type, int root) override {
    host(buf);
    inner_->broadcast(buf, count, type, root);
  }
  void scatterv(const void* send, std::span<const int> counts, std::span<const int> displs,
                void* recv, int recv_count, DataType type, int root) override {
    if (rank() == root) host(send);  // read on the root only
    host(recv);
    inner_->scatterv(send, counts, displs, recv, recv_count, type, root);
  }
  void barrier() override { inner_->barrier(); }

 private:
  void host(const void* p) {
    if (!memory_.is_device(p)) return;
    if (!allow_device_) throw std::logic_error("MPI was handed device memory");
    ++device_buffers_seen;
  }
  std::shared_ptr<Communicator> inner_;
  const DeviceMemory& memory_;
  bool allow_device_;
};

struct Staging : ::testing::Test {
  std::shared_ptr<FakeDeviceMemory> memory = std::make_shared<FakeDeviceMemory>();
  std::shared_ptr<MpiCommunicator> mpi = std::make_shared<MpiCommunicator>(MPI_COMM_WORLD);
  StagingCommunicator comm{std::make_shared<HostOnlyGuard>(mpi, *memory), memory};
  int r = mpi->rank();
  int n = mpi->size();

  // count values that differ by rank and element, on the "device" and on the host.
  float* device_values(std::size_t count, int salt = 0) {
    float* d = memory->make(count);
    for (std::size_t i = 0; i < count; ++i) d[i] = static_cast<float>((r + 1) * 100 + i + salt);
    return d;
  }
  std::vector<float> host_copy(const float* d, std::size_t count) {
    return std::vector<float>(d, d + count);
  }
};

}  // namespace

TEST_F(Staging, AllreduceOfDeviceMemoryEqualsMpiOnHostMemory) {
  float* d = device_values(385);
  std::vector<float> expected = host_copy(d, 385);
  mpi->allreduce(std::span<float>(expected), ReduceOp::Average);
  comm.allreduce(d, 385, DataType::Float32, ReduceOp::Average);
  EXPECT_EQ(host_copy(d, 385), expected);
  EXPECT_EQ(memory->copies, 2);
}

TEST_F(Staging, HostMemoryPassesThroughUnstaged) {
  std::vector<float> h(10, static_cast<float>(r));
  comm.allreduce(std::span<float>(h), ReduceOp::Sum);
  EXPECT_EQ(h[0], static_cast<float>(n * (n - 1) / 2));
  std::vector<double> scalar{1.0};
  comm.broadcast(std::span<double>(scalar), 0);
  EXPECT_EQ(memory->copies, 0);
  EXPECT_EQ(comm.staging_buffers(), 0u);
}

TEST_F(Staging, AsyncAllreducesInFlightTogetherAndTheirBuffersAreReused) {
  // Two handles in flight at once need two staging buffers; later steps reuse them.
  for (int step = 0; step < 3; ++step) {
    float* a = device_values(1000, step);
    float* b = device_values(300, step + 7);
    std::vector<float> ea = host_copy(a, 1000), eb = host_copy(b, 300);
    mpi->allreduce(std::span<float>(ea), ReduceOp::Sum);
    mpi->allreduce(std::span<float>(eb), ReduceOp::Sum);
    auto wa = comm.allreduce_async(a, 1000, DataType::Float32, ReduceOp::Sum);
    auto wb = comm.allreduce_async(b, 300, DataType::Float32, ReduceOp::Sum);
    wb->wait();
    while (!wa->test()) {
    }
    EXPECT_TRUE(wa->test());  // completed handles stay complete; the result is copied once
    wa->wait();
    EXPECT_EQ(host_copy(a, 1000), ea) << "step " << step;
    EXPECT_EQ(host_copy(b, 300), eb) << "step " << step;
  }
  EXPECT_EQ(comm.staging_buffers(), 2u);
  EXPECT_EQ(memory->allocations, 2);
  EXPECT_EQ(memory->copies, 3 * 4);
}

TEST_F(Staging, ReduceScatterAndAllGatherWithEitherSideOnTheDevice) {
  const std::size_t block = 17;
  for (bool send_on_device : {false, true}) {
    for (bool recv_on_device : {false, true}) {
      std::vector<float> host_send(block * n);
      float* send = send_on_device ? memory->make(block * n) : host_send.data();
      for (std::size_t i = 0; i < block * n; ++i) send[i] = static_cast<float>(r * 1000 + i);
      std::vector<float> expected(block), host_recv(block);
      mpi->reduce_scatter(send, expected.data(), block, DataType::Float32, ReduceOp::Sum);
      float* recv = recv_on_device ? memory->make(block) : host_recv.data();
      comm.reduce_scatter(send, recv, block, DataType::Float32, ReduceOp::Sum);
      EXPECT_EQ(host_copy(recv, block), expected) << send_on_device << recv_on_device;

      std::vector<float> gathered(block * n), host_all(block * n);
      mpi->all_gather(recv, gathered.data(), block, DataType::Float32);
      float* all = send_on_device ? memory->make(block * n) : host_all.data();
      comm.all_gather(recv, all, block, DataType::Float32);
      EXPECT_EQ(host_copy(all, block * n), gathered) << send_on_device << recv_on_device;
    }
  }
}

TEST_F(Staging, BroadcastAndScattervFromEveryRoot) {
  for (int root = 0; root < n; ++root) {
    float* d = device_values(64);
    std::vector<float> expected = host_copy(d, 64);
    mpi->broadcast(std::span<float>(expected), root);
    comm.broadcast(d, 64, DataType::Float32, root);
    EXPECT_EQ(host_copy(d, 64), expected) << "root " << root;

    // Uneven counts, rank q gets q + 1 elements, from a device buffer on the root.
    std::vector<int> counts(n), displs(n);
    for (int q = 0; q < n; ++q) counts[q] = q + 1;
    std::exclusive_scan(counts.begin(), counts.end(), displs.begin(), 0);
    const int total = displs.back() + counts.back();
    float* send = device_values(static_cast<std::size_t>(total), root);
    float* recv = memory->make(static_cast<std::size_t>(r + 1));
    std::vector<float> want(static_cast<std::size_t>(r + 1));
    mpi->scatterv(send, counts, displs, want.data(), r + 1, DataType::Float32, root);
    comm.scatterv(send, counts, displs, recv, r + 1, DataType::Float32, root);
    EXPECT_EQ(host_copy(recv, static_cast<std::size_t>(r + 1)), want) << "root " << root;
  }
}

TEST_F(Staging, WithoutTheStagerTheGuardCatchesDeviceMemory) {
  // The guard the tests above rely on does fail on device memory.
  HostOnlyGuard guard(mpi, *memory);
  float* d = device_values(4);
  EXPECT_THROW(guard.allreduce(d, 4, DataType::Float32, ReduceOp::Sum), std::logic_error);
}

TEST_F(Staging, ACudaAwareMpiGetsDeviceBuffersWhereItDoesAllTheArithmetic) {
  auto direct_mpi = std::make_shared<HostOnlyGuard>(mpi, *memory, /*allow_device=*/true);
  StagingCommunicator direct(direct_mpi, memory, DeviceBufferPath::Direct);
  float* d = device_values(100);
  std::vector<float> expected = host_copy(d, 100);
  mpi->allreduce(std::span<float>(expected), ReduceOp::Sum);
  direct.allreduce(d, 100, DataType::Float32, ReduceOp::Sum);  // MPI_Allreduce: direct
  direct.broadcast(d, 100, DataType::Float32, 0);
  std::vector<float> all(100 * static_cast<std::size_t>(n));
  direct.all_gather(d, all.data(), 100, DataType::Float32);
  EXPECT_EQ(host_copy(d, 100), expected);
  EXPECT_EQ(direct_mpi->device_buffers_seen, 3);
  EXPECT_EQ(memory->copies, 0);

  // Averages (divided on the host) and non-blocking all-reduces (the ring adds on the host)
  // are staged even so.
  float* a = device_values(100);
  std::vector<float> averaged = host_copy(a, 100);
  mpi->allreduce(std::span<float>(averaged), ReduceOp::Average);
  direct.allreduce(a, 100, DataType::Float32, ReduceOp::Average);
  EXPECT_EQ(host_copy(a, 100), averaged);
  float* b = device_values(1 << 15);  // large enough for MpiCommunicator's ring
  std::vector<float> summed = host_copy(b, 1 << 15);
  mpi->allreduce(std::span<float>(summed), ReduceOp::Sum);
  direct.allreduce_async(b, 1 << 15, DataType::Float32, ReduceOp::Sum)->wait();
  EXPECT_EQ(host_copy(b, 1 << 15), summed);
  EXPECT_EQ(direct_mpi->device_buffers_seen, 3);
  EXPECT_EQ(memory->copies, 4);
  // bf16 sums run in a user-defined MPI_Op, host code: staged.
  auto* bf = reinterpret_cast<bfloat16_bits*>(memory->make(50));  // 100 bf16 values
  for (int i = 0; i < 100; ++i) bf[i] = to_bfloat16(1.0f);
  direct.allreduce(bf, 100, DataType::BFloat16, ReduceOp::Sum);
  for (int i = 0; i < 100; ++i) ASSERT_EQ(from_bfloat16(bf[i]), static_cast<float>(n)) << i;
  EXPECT_EQ(direct_mpi->device_buffers_seen, 3);
  EXPECT_EQ(memory->copies, 6);
}

TEST(DeviceBufferPath, AutoStagesUnlessTheLibraryIsCudaAware) {
  EXPECT_EQ(resolve_device_buffer_path("auto", CudaAwareness::Yes), DeviceBufferPath::Direct);
  EXPECT_EQ(resolve_device_buffer_path("auto", CudaAwareness::No), DeviceBufferPath::Stage);
  EXPECT_EQ(resolve_device_buffer_path("auto", CudaAwareness::Unknown), DeviceBufferPath::Stage);
  for (CudaAwareness a : {CudaAwareness::Yes, CudaAwareness::No, CudaAwareness::Unknown}) {
    EXPECT_EQ(resolve_device_buffer_path("stage", a), DeviceBufferPath::Stage) << name_of(a);
  }
  EXPECT_EQ(resolve_device_buffer_path("direct", CudaAwareness::Yes), DeviceBufferPath::Direct);
  EXPECT_EQ(resolve_device_buffer_path("direct", CudaAwareness::Unknown),
            DeviceBufferPath::Direct);
}

TEST(DeviceBufferPath, ImpossibleOrUnknownChoicesAreOneLineErrors) {
  try {
    resolve_device_buffer_path("direct", CudaAwareness::No);
    FAIL() << "direct with a non-CUDA-aware MPI was accepted";
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.field(), "MESHTRAIN_MPI_DEVICE_BUFFERS");
    EXPECT_NE(std::string(e.what()).find("'direct': this MPI library is not CUDA-aware"),
              std::string::npos)
        << e.what();
  }
  try {
    resolve_device_buffer_path("yes", CudaAwareness::Yes);
    FAIL() << "an unknown value was accepted";
  } catch (const ConfigError& e) {
    EXPECT_STREQ(e.what(),
                 "MESHTRAIN_MPI_DEVICE_BUFFERS 'yes': unknown (choose auto, stage or direct)");
  }
}
