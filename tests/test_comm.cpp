// MpiCommunicator collectives at whatever rank count the test is launched with.
#include <gtest/gtest.h>
#include <sched.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <numeric>
#include <vector>

#include "meshtrain/comm/bfloat16.hpp"
#include "meshtrain/comm/checked_communicator.hpp"
#include "meshtrain/comm/counting_communicator.hpp"
#include "meshtrain/comm/flight_recorder.hpp"
#include "meshtrain/comm/mpi_communicator.hpp"
#include "meshtrain/error.hpp"
#include "meshtrain/runtime/cpu_affinity.hpp"

using namespace meshtrain;

namespace {
struct World : ::testing::Test {
  MpiCommunicator comm{MPI_COMM_WORLD};
  int r = comm.rank();
  int n = comm.size();
};
}  // namespace

TEST_F(World, AllreduceSumAverageMaxMinFloat) {
  for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Average, ReduceOp::Max, ReduceOp::Min}) {
    std::vector<float> buf(385);
    for (std::size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<float>((r + 1) * (i % 7));
    comm.allreduce(std::span<float>(buf), op);
    const float ranks_sum = n * (n + 1) / 2.0f;
    for (std::size_t i = 0; i < buf.size(); ++i) {
      const float base = static_cast<float>(i % 7);
      const float expected = op == ReduceOp::Sum       ? ranks_sum * base
                             : op == ReduceOp::Average ? ranks_sum * base / n
                             : op == ReduceOp::Max     ? n * base
                                                       : base;
      ASSERT_FLOAT_EQ(buf[i], expected) << name_of(op) << " element " << i;
    }
  }
}

TEST_F(World, AllreduceDoubleAndIntegers) {
  std::vector<double> d{1.5 * r, -2.0};
  comm.allreduce(std::span<double>(d), ReduceOp::Sum);
  EXPECT_DOUBLE_EQ(d[0], 1.5 * n * (n - 1) / 2);
  EXPECT_DOUBLE_EQ(d[1], -2.0 * n);
  std::vector<std::int64_t> i64{std::int64_t{1} << 40, r};
  comm.allreduce(std::span<std::int64_t>(i64), ReduceOp::Sum);
  EXPECT_EQ(i64[0], (std::int64_t{1} << 40) * n);
  EXPECT_EQ(i64[1], n * (n - 1) / 2);
  std::vector<std::int32_t> i32{r};
  comm.allreduce(std::span<std::int32_t>(i32), ReduceOp::Max);
  EXPECT_EQ(i32[0], n - 1);
}

TEST_F(World, AsyncAllreduceMatchesBlocking) {
  std::vector<float> a(1000), b(1000);
  for (int i = 0; i < 1000; ++i) a[i] = b[i] = static_cast<float>(r * 1000 + i);
  auto work = comm.allreduce_async(a.data(), a.size(), DataType::Float32, ReduceOp::Average);
  comm.allreduce(b.data(), b.size(), DataType::Float32, ReduceOp::Average);
  work->wait();
  EXPECT_TRUE(work->test());
  EXPECT_EQ(a, b);
}

// Float sums of at least kRingMinBytes take the ring over point-to-point messages: several in
// flight at once, sizes that do not divide by the rank count, driven by test() alone or by
// wait(), and the same buffers again (the ring's scratch buffers are reused). Integer-valued
// floats sum exactly in any order, so the result must equal the blocking all-reduce's.
TEST_F(World, RingAllreducesInFlightTogetherMatchBlocking) {
  const std::size_t floor = MpiCommunicator::kRingMinBytes / sizeof(float);
  const std::vector<std::size_t> counts{floor, floor + 7, 3 * floor + 1, floor - 1};
  for (int round = 0; round < 3; ++round) {
    std::vector<std::vector<float>> bufs, expected;
    for (std::size_t c : counts) {
      std::vector<float> v(c);
      for (std::size_t i = 0; i < c; ++i) v[i] = static_cast<float>((r + 1) * (i % 13) + round);
      bufs.push_back(v);
      comm.allreduce(v.data(), v.size(), DataType::Float32, ReduceOp::Sum);
      expected.push_back(v);
    }
    std::vector<std::unique_ptr<Work>> works;
    for (auto& b : bufs) works.push_back(comm.allreduce_async(b.data(), b.size(), DataType::Float32, ReduceOp::Sum));
    if (round == 1) {
      for (auto& w : works) w->wait();
    } else {
      // Polled only, in reverse order: each ring must move on whatever the others do.
      for (bool all = false; !all;) {
        all = true;
        for (std::size_t i = works.size(); i-- > 0;) all = works[i]->test() && all;
      }
    }
    for (std::size_t k = 0; k < counts.size(); ++k) {
      EXPECT_TRUE(works[k]->test());
      ASSERT_EQ(bufs[k], expected[k]) << "count " << counts[k] << ", round " << round;
    }
  }
  // A handle dropped before it completes still finishes before its buffer can go away.
  std::vector<float> dropped(floor, 1.0f);
  comm.allreduce_async(dropped.data(), dropped.size(), DataType::Float32, ReduceOp::Sum).reset();
  EXPECT_EQ(dropped.front(), static_cast<float>(n));
  EXPECT_EQ(dropped.back(), static_cast<float>(n));
}

TEST_F(World, ReduceScatterAndAllGather) {
  const std::size_t count = 5;
  std::vector<float> send(count * n);
  for (std::size_t i = 0; i < send.size(); ++i) send[i] = static_cast<float>(i + r);
  std::vector<float> recv(count);
  comm.reduce_scatter(send.data(), recv.data(), count, DataType::Float32, ReduceOp::Sum);
  for (std::size_t i = 0; i < count; ++i) {
    const float global_index = static_cast<float>(r * count + i);
    EXPECT_FLOAT_EQ(recv[i], n * global_index + n * (n - 1) / 2.0f);
  }
  std::vector<float> gathered(count * n);
  comm.all_gather(recv.data(), gathered.data(), count, DataType::Float32);
  for (int q = 0; q < n; ++q) {
    for (std::size_t i = 0; i < count; ++i) {
      EXPECT_FLOAT_EQ(gathered[q * count + i], n * static_cast<float>(q * count + i) + n * (n - 1) / 2.0f);
    }
  }
}

TEST_F(World, BroadcastFromEveryRoot) {
  for (int root = 0; root < n; ++root) {
    std::vector<double> buf(3, r == root ? 7.0 + root : -1.0);
    comm.broadcast(std::span<double>(buf), root);
    for (double v : buf) EXPECT_EQ(v, 7.0 + root);
  }
}

TEST_F(World, ScattervUnevenCounts) {
  std::vector<int> counts(n), displs(n);
  int total = 0;
  for (int q = 0; q < n; ++q) {
    counts[q] = q + 1;
    displs[q] = total;
    total += counts[q];
  }
  std::vector<float> send;
  if (r == 0) {
    send.resize(total);
    std::iota(send.begin(), send.end(), 0.0f);
  }
  std::vector<float> recv(counts[r]);
  comm.scatterv(send.data(), counts, displs, recv.data(), counts[r], DataType::Float32, 0);
  for (int i = 0; i < counts[r]; ++i) EXPECT_EQ(recv[i], static_cast<float>(displs[r] + i));
}

TEST_F(World, CountBeyondIntIsAClearErrorNotACrash) {
  float dummy = 0;
  try {
    comm.allreduce(&dummy, static_cast<std::size_t>(INT_MAX) + 1, DataType::Float32, ReduceOp::Sum);
    FAIL() << "expected CommError";
  } catch (const CommError& e) {
    EXPECT_NE(std::string(e.what()).find("MPI_Allreduce"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("rank"), std::string::npos) << e.what();
  }
  comm.barrier();
}

TEST(CheckMpi, ErrorNamesCallRankAndCode) {
  try {
    check_mpi(MPI_ERR_COUNT, "MPI_Fake");
    FAIL() << "expected CommError";
  } catch (const CommError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("MPI_Fake failed on rank"), std::string::npos) << what;
    EXPECT_NE(what.find("code " + std::to_string(MPI_ERR_COUNT)), std::string::npos) << what;
  }
}

TEST(CpuAffinity, ARankBoundToOneCpuHasNoCoreToSpare) {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  cpu_set_t saved;
  ASSERT_EQ(sched_getaffinity(0, sizeof(saved), &saved), 0);
  const bool before = every_rank_has_spare_core(MPI_COMM_WORLD);
  int cpus = cpus_in_affinity_mask();
  EXPECT_EQ(cpus, CPU_COUNT(&saved));
  // The answer is collective: the same on every rank.
  int agree[2] = {before ? 1 : 0, before ? 1 : 0};
  MPI_Allreduce(MPI_IN_PLACE, &agree[0], 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  MPI_Allreduce(MPI_IN_PLACE, &agree[1], 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  EXPECT_EQ(agree[0], agree[1]);
  if (cpus < 2) {
    EXPECT_FALSE(before);
  }

  // Rank 0 alone bound to its first CPU: no rank may use a thread now.
  if (rank == 0) {
    cpu_set_t one;
    CPU_ZERO(&one);
    for (int c = 0; c < CPU_SETSIZE; ++c) {
      if (CPU_ISSET(c, &saved)) {
        CPU_SET(c, &one);
        break;
      }
    }
    ASSERT_EQ(sched_setaffinity(0, sizeof(one), &one), 0);
    EXPECT_EQ(cpus_in_affinity_mask(), 1);
  }
  EXPECT_FALSE(every_rank_has_spare_core(MPI_COMM_WORLD));
  if (rank == 0) {
    ASSERT_EQ(sched_setaffinity(0, sizeof(saved), &saved), 0);
  }
  EXPECT_EQ(every_rank_has_spare_core(MPI_COMM_WORLD), before);
}

// ---- bfloat16 collectives (DataType::BFloat16): the gradient all-reduce of
// training.grad_comm_dtype = "bf16".

namespace {
std::vector<std::uint16_t> to_bf16(const std::vector<float>& v) {
  std::vector<std::uint16_t> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = to_bfloat16(v[i]);
  return out;
}

// Rank r's value of element i: not representable in bfloat16, of mixed signs and magnitudes.
float bf16_test_value(int r, std::size_t i) {
  const double x = std::sin(0.37 * static_cast<double>(i) + 1.3 * r) * (1.0 + (i % 11)) +
                   1e-3 * static_cast<double>(r + 1);
  return static_cast<float>(x);
}
}  // namespace

// Small integers are exact in bfloat16 (8 significant bits), so every reduction must give
// exactly what float gives, blocking or not.
TEST_F(World, Bf16AllreduceOfExactValuesIsExact) {
  for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Average, ReduceOp::Max, ReduceOp::Min}) {
    std::vector<float> values(385);
    for (std::size_t i = 0; i < values.size(); ++i) values[i] = static_cast<float>((r + 1) * (i % 7));
    std::vector<std::uint16_t> buf = to_bf16(values), async_buf = buf;
    comm.allreduce(buf.data(), buf.size(), DataType::BFloat16, op);
    comm.allreduce_async(async_buf.data(), async_buf.size(), DataType::BFloat16, op)->wait();
    comm.allreduce(std::span<float>(values), op);
    for (std::size_t i = 0; i < values.size(); ++i) {
      ASSERT_EQ(from_bfloat16(buf[i]), values[i]) << name_of(op) << " element " << i;
      ASSERT_EQ(async_buf[i], buf[i]) << name_of(op) << " element " << i;
    }
  }
}

// Against the fp32 sum of the unrounded values: each input is rounded once (relative error at
// most 2^-8, bfloat16's unit roundoff) and each of the n - 1 combines of partial sums once
// more, so with n ranks the error is at most (2n - 1) * 2^-8 * sum |x_r| (first order); the
// test allows 2n * 2^-8 * sum |x_r|. Sizes
// below and above the ring's threshold (blocking: MPI_Allreduce with the user-defined op;
// non-blocking: MPI_Iallreduce, or the ring), some not divisible by the rank count.
TEST_F(World, Bf16AllreduceSumIsTheFloatSumWithinBf16Rounding) {
  const std::size_t ring = MpiCommunicator::kRingMinBytes / 2;
  for (std::size_t count : {std::size_t{1000}, ring, ring + 3, 3 * ring + 1}) {
    std::vector<float> mine(count), reference(count), magnitude(count);
    for (std::size_t i = 0; i < count; ++i) {
      mine[i] = reference[i] = bf16_test_value(r, i);
      magnitude[i] = std::abs(mine[i]);
    }
    comm.allreduce(std::span<float>(reference), ReduceOp::Sum);
    comm.allreduce(std::span<float>(magnitude), ReduceOp::Sum);
    std::vector<std::uint16_t> blocking = to_bf16(mine), polled = blocking, waited = blocking;
    comm.allreduce(blocking.data(), count, DataType::BFloat16, ReduceOp::Sum);
    auto a = comm.allreduce_async(polled.data(), count, DataType::BFloat16, ReduceOp::Sum);
    auto b = comm.allreduce_async(waited.data(), count, DataType::BFloat16, ReduceOp::Sum);
    while (!a->test()) {
    }
    b->wait();
    const double bound = 2 * n * std::ldexp(1.0, -8);
    double worst = 0.0;
    for (std::size_t i = 0; i < count; ++i) {
      for (const auto* out : {&blocking, &polled, &waited}) {
        const double error = std::abs(from_bfloat16((*out)[i]) - static_cast<double>(reference[i]));
        worst = std::max(worst, error / magnitude[i]);
        ASSERT_LE(error, bound * magnitude[i]) << "count " << count << " element " << i;
      }
    }
    // Rounding must have happened somewhere (the values are not bf16): the test can fail.
    if (n > 1) {
      EXPECT_GT(worst, 0.0) << "count " << count;
    }
    // Every rank holds the same bits.
    std::vector<std::uint16_t> root = polled;
    comm.broadcast(root.data(), count, DataType::BFloat16, 0);
    EXPECT_EQ(root, polled) << "count " << count;
  }
}

TEST_F(World, Bf16ReduceScatterAllGatherAndBroadcast) {
  const std::size_t count = 5;
  std::vector<float> send(count * n);
  for (std::size_t i = 0; i < send.size(); ++i) send[i] = static_cast<float>(i + r);
  const std::vector<std::uint16_t> narrow = to_bf16(send);
  std::vector<std::uint16_t> recv(count);
  comm.reduce_scatter(narrow.data(), recv.data(), count, DataType::BFloat16, ReduceOp::Sum);
  for (std::size_t i = 0; i < count; ++i) {
    const float global_index = static_cast<float>(r * count + i);
    EXPECT_EQ(from_bfloat16(recv[i]), n * global_index + n * (n - 1) / 2.0f);  // exact: small
  }
  std::vector<std::uint16_t> gathered(count * n);
  comm.all_gather(recv.data(), gathered.data(), count, DataType::BFloat16);
  for (int q = 0; q < n; ++q) {
    for (std::size_t i = 0; i < count; ++i) {
      EXPECT_EQ(from_bfloat16(gathered[q * count + i]),
                n * static_cast<float>(q * count + i) + n * (n - 1) / 2.0f);
    }
  }
  EXPECT_EQ(size_of(DataType::BFloat16), 2u);
  EXPECT_EQ(name_of(DataType::BFloat16), "bfloat16");
}

// NaN and Inf survive the sum (the non-finite check after the all-reduce relies on it).
TEST_F(World, Bf16AllreduceKeepsNanAndInf) {
  std::vector<std::uint16_t> buf(4, to_bfloat16(1.0f));
  if (r == 0) {
    buf[0] = to_bfloat16(std::numeric_limits<float>::quiet_NaN());
    buf[1] = to_bfloat16(std::numeric_limits<float>::infinity());
  }
  buf[2] = to_bfloat16(3.0e38f);  // n * 3e38 overflows bf16 (as float) from two ranks on
  comm.allreduce(buf.data(), buf.size(), DataType::BFloat16, ReduceOp::Sum);
  EXPECT_TRUE(std::isnan(from_bfloat16(buf[0])));
  EXPECT_EQ(from_bfloat16(buf[1]), std::numeric_limits<float>::infinity());
  if (n > 1) {
    EXPECT_EQ(from_bfloat16(buf[2]), std::numeric_limits<float>::infinity());
  }
  EXPECT_EQ(from_bfloat16(buf[3]), static_cast<float>(n));
}

// The decorators pass bfloat16 collectives on (and count them as 2 bytes an element); the
// checked one compares them across ranks in debug mode and names the type.
TEST_F(World, DecoratorsForwardBf16Collectives) {
  auto mpi = std::make_shared<MpiCommunicator>(MPI_COMM_WORLD);
  auto counting = std::make_shared<CountingCommunicator>(mpi);
  CheckedCommunicator checked(counting, MPI_COMM_WORLD, "test",
                              CollectiveChecks{std::chrono::milliseconds(60000), true});
  std::vector<std::uint16_t> buf(100, to_bfloat16(1.5f));
  checked.allreduce(buf.data(), buf.size(), DataType::BFloat16, ReduceOp::Sum);
  for (std::uint16_t v : buf) ASSERT_EQ(from_bfloat16(v), 1.5f * n);
  checked.allreduce_async(buf.data(), buf.size(), DataType::BFloat16, ReduceOp::Average)->wait();
  for (std::uint16_t v : buf) ASSERT_EQ(from_bfloat16(v), 1.5f * n);  // n * 1.5 n / n
  EXPECT_EQ(counting->tally("allreduce").bytes, 200u);
  EXPECT_EQ(counting->tally("allreduce_async").bytes, 200u);
  EXPECT_EQ(checked.sequence(), 2u);
}

// In debug mode a rank that sends bf16 where another sends fp32 is a mismatch, named by type.
TEST_F(World, DebugModeNamesABf16Mismatch) {
  if (n < 2) GTEST_SKIP() << "needs two ranks";
  CheckedCommunicator checked(std::make_shared<MpiCommunicator>(MPI_COMM_WORLD), MPI_COMM_WORLD,
                              "test", CollectiveChecks{std::chrono::milliseconds(60000), true});
  std::vector<float> buf(4, 1.0f);  // large enough for either type
  const DataType type = r == 0 ? DataType::BFloat16 : DataType::Float32;
  try {
    checked.allreduce(buf.data(), 4, type, ReduceOp::Sum);
    FAIL() << "expected a collective mismatch";
  } catch (const CommError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("allreduce of 4 bfloat16"), std::string::npos) << what;
    EXPECT_NE(what.find("allreduce of 4 float32"), std::string::npos) << what;
  }
  comm.barrier();
}

namespace {
// MPI collectives, but a communicator that says they are ordered on a device stream and
// records the stream it was asked about (as NcclCommunicator would, without a GPU).
class StreamOrdered final : public ObservingCommunicator {
 public:
  StreamOrdered() : ObservingCommunicator(std::make_shared<MpiCommunicator>(MPI_COMM_WORLD)) {}
  bool order_after_stream(void* stream) override {
    asked = stream;
    return true;
  }
  void* asked = nullptr;

 private:
  void before(const CollectiveCall&) override {}
};
}  // namespace

// The engines' ordering question (Communicator::order_after_stream, train/device_order.hpp)
// reaches the communicator through every decorator the runtime puts on a group; MPI says no,
// so callers fence.
TEST_F(World, DecoratorsForwardOrderAfterStream) {
  int marker = 0;
  EXPECT_FALSE(MpiCommunicator(MPI_COMM_WORLD).order_after_stream(&marker));
  auto inner = std::make_shared<StreamOrdered>();
  auto counting = std::make_shared<CountingCommunicator>(inner);
  auto recorder = std::make_shared<FlightRecorder>(8, r, n);
  auto recorded = std::make_shared<FlightRecordingCommunicator>(
      counting, recorder, recorder->add_group("world", 0, n, r));
  CheckedCommunicator checked(recorded, MPI_COMM_WORLD, "test",
                              CollectiveChecks{std::chrono::milliseconds(60000), true});
  EXPECT_TRUE(checked.order_after_stream(&marker));
  EXPECT_EQ(inner->asked, &marker);
  EXPECT_EQ(checked.sequence(), 0u);  // not a collective
  auto plain = std::make_shared<CountingCommunicator>(std::make_shared<MpiCommunicator>(MPI_COMM_WORLD));
  EXPECT_FALSE(plain->order_after_stream(&marker));
}
