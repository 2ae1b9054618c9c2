// MpiCommunicator collectives at whatever rank count the test is launched with.
#include <gtest/gtest.h>
#include <sched.h>

#include <climits>
#include <memory>
#include <numeric>
#include <vector>

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
