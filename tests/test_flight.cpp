// The flight recorder's ring, its file, the recording decorator and the triage of synthetic
// dumps (missing, lagging, mismatched and consistent ranks). No MPI: one process plays every
// rank by filling one recorder per rank.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "meshtrain/comm/device_timer.hpp"
#include "meshtrain/comm/flight_recorder.hpp"

namespace meshtrain {
namespace {

namespace fs = std::filesystem;

struct TempDir {
  fs::path path;
  TempDir() {
    char templ[] = "/tmp/meshtrain-flight-XXXXXX";
    path = ::mkdtemp(templ);
  }
  ~TempDir() { fs::remove_all(path); }
};

// One simulated rank: a recorder with the groups "world" and "data" (colour 0).
struct Rank {
  std::unique_ptr<FlightRecorder> recorder;
  std::uint64_t data_seq = 0, world_seq = 0;
  int data = 0, world = 0;
  Rank(int rank, int size, std::size_t capacity = 64)
      : recorder(std::make_unique<FlightRecorder>(capacity, rank, size)) {
    world = recorder->add_group("world", 0, size, rank);
    data = recorder->add_group("data", 0, size, rank);
  }
  // A completed (or, with done = false, entered) collective on 'data'.
  void data_call(FlightOp op, std::size_t count, bool done = true, std::int64_t step = 0) {
    recorder->set_step(step);
    const auto t = recorder->begin(data, ++data_seq, op, DataType::Float32, count, count * 4, -1,
                                   FlightRecorder::now_ns());
    if (done) recorder->complete(t);
  }
  void world_call() {
    const auto t = recorder->begin(world, ++world_seq, FlightOp::Allreduce, DataType::Int32, 2,
                                   8, -1, FlightRecorder::now_ns());
    recorder->complete(t);
  }
  FlightDump dump(const TempDir& dir) const {
    const std::string path =
        (dir.path / ("flight-rank" + std::to_string(recorder->header().world_rank) + ".bin"))
            .string();
    recorder->write_copy(path);
    return read_flight_dump(path);
  }
};

// n steps on every rank: the gradient all-reduce on 'data', the flags on 'world'.
void steps(std::vector<Rank>& ranks, int n) {
  for (int s = 0; s < n; ++s) {
    for (Rank& r : ranks) {
      r.data_call(FlightOp::AllreduceAsync, 386, true, s);
      r.world_call();
    }
  }
}

std::vector<Rank> make_ranks(int n, std::size_t capacity = 64) {
  std::vector<Rank> ranks;
  for (int r = 0; r < n; ++r) ranks.emplace_back(r, n, capacity);
  return ranks;
}

std::vector<FlightDump> dumps_of(const std::vector<Rank>& ranks, const TempDir& dir) {
  std::vector<FlightDump> out;
  for (const Rank& r : ranks) out.push_back(r.dump(dir));
  return out;
}

TEST(FlightRecorder, KeepsTheLastRecordsWhenTheRingWraps) {
  TempDir dir;
  Rank rank(0, 1, 4);
  for (int i = 0; i < 10; ++i) rank.data_call(FlightOp::Allreduce, 10 + i);
  const FlightDump d = rank.dump(dir);
  EXPECT_EQ(d.header.written, 10u);
  EXPECT_EQ(d.header.capacity, 4u);
  ASSERT_EQ(d.records.size(), 4u);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(d.records[i].sequence, 7u + i);  // oldest first
    EXPECT_EQ(d.records[i].count, 16u + i);
    EXPECT_EQ(d.records[i].ticket, 7u + i);
  }
}

TEST(FlightRecorder, FileHoldsTheHeaderGroupsAndRecordFields) {
  TempDir dir;
  Rank rank(2, 3);
  {
    CollectiveSite site("trainer.test_site");
    rank.data_call(FlightOp::Broadcast, 5, true, 7);
  }
  rank.data_call(FlightOp::AllreduceAsync, 386, false, 8);  // entered, never completed
  const FlightDump d = rank.dump(dir);
  EXPECT_EQ(std::string(d.header.magic, 8), "MTFLIGHT");
  EXPECT_EQ(d.header.world_rank, 2);
  EXPECT_EQ(d.header.world_size, 3);
  ASSERT_EQ(d.groups.size(), 2u);
  EXPECT_STREQ(d.groups[1].name, "data");
  EXPECT_EQ(d.groups[1].size, 3);
  EXPECT_EQ(d.groups[1].rank, 2);
  ASSERT_EQ(d.records.size(), 2u);
  const flight::Record& first = d.records[0];
  EXPECT_EQ(first.op, static_cast<int>(FlightOp::Broadcast));
  EXPECT_EQ(first.count, 5u);
  EXPECT_EQ(first.bytes, 20u);
  EXPECT_EQ(first.step, 7);
  EXPECT_STREQ(first.site, "trainer.test_site");
  EXPECT_GE(first.end_ns, first.start_ns);
  EXPECT_GE(first.start_ns, first.enqueue_ns);
  EXPECT_GT(first.enqueue_ns, 0);
  EXPECT_EQ(d.records[1].end_ns, 0);  // still in flight
  EXPECT_STREQ(d.records[1].site, "");
  EXPECT_EQ(d.records[1].step, 8);
}

TEST(FlightRecorder, RefusesAFileThatIsNotADump) {
  TempDir dir;
  const std::string path = (dir.path / "flight-rank0.bin").string();
  {
    std::FILE* f = std::fopen(path.c_str(), "wb");
    std::fputs("not a dump", f);
    std::fclose(f);
  }
  EXPECT_THROW(read_flight_dump(path), std::runtime_error);
  const TriageReport r = [&] {
    try {
      return triage_flight_directory(dir.path.string());
    } catch (const std::runtime_error& e) {
      TriageReport failed;
      failed.code = 2;
      failed.finding = e.what();
      return failed;
    }
  }();
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.finding.find("not a meshtrain flight recorder dump"), std::string::npos);
}

TEST(FlightTriage, ConsistentRanksExitZero) {
  TempDir dir;
  auto ranks = make_ranks(3);
  steps(ranks, 30);
  const TriageReport r = triage_flight_dumps(dumps_of(ranks, dir));
  EXPECT_EQ(r.code, 0) << r.finding;
  EXPECT_TRUE(r.culprits.empty());
  EXPECT_NE(r.finding.find("consistent"), std::string::npos) << r.finding;
}

TEST(FlightTriage, ConsistentEvenWhenTheRingsWrappedAtDifferentPoints) {
  TempDir dir;
  std::vector<Rank> ranks;
  ranks.emplace_back(0, 2, 8);
  ranks.emplace_back(1, 2, 5);  // a smaller ring: it holds fewer of the same collectives
  steps(ranks, 20);
  ranks[0].world_call();  // rank 0 alone has started the next control collective...
  ranks[1].world_call();  // ...and rank 1 too: still consistent
  for (int i = 0; i < 3; ++i) ranks[1].world_call(), ranks[0].world_call();
  const TriageReport r = triage_flight_dumps(dumps_of(ranks, dir));
  EXPECT_EQ(r.code, 0) << r.finding;
}

TEST(FlightTriage, NamesTheLaggingRank) {
  TempDir dir;
  auto ranks = make_ranks(4);
  steps(ranks, 20);  // #1..#20 on 'data' everywhere
  for (int rank : {0, 2, 3}) ranks[rank].data_call(FlightOp::AllreduceAsync, 386, false, 20);
  const TriageReport r = triage_flight_dumps(dumps_of(ranks, dir));
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.culprits, std::vector<int>{1});
  EXPECT_EQ(r.finding,
            "collective #21 on 'data': ranks 0,2,3 entered allreduce_async of 386 float32 (step "
            "20); rank 1 never reached it (its last: #20 allreduce_async of 386 float32 (step 19), "
            "completed)");
}

TEST(FlightTriage, NamesTheRankThatCalledSomethingElse) {
  TempDir dir;
  auto ranks = make_ranks(3);
  steps(ranks, 5);
  ranks[0].data_call(FlightOp::AllreduceAsync, 386, false, 5);
  ranks[1].data_call(FlightOp::Barrier, 0, false, 5);
  ranks[2].data_call(FlightOp::AllreduceAsync, 386, false, 5);
  const TriageReport r = triage_flight_dumps(dumps_of(ranks, dir));
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.culprits, std::vector<int>{1});
  EXPECT_NE(r.finding.find("collective #6 on 'data': the ranks called different collectives"),
            std::string::npos)
      << r.finding;
  EXPECT_NE(r.finding.find("rank 1 called barrier"), std::string::npos) << r.finding;
  EXPECT_NE(r.finding.find("ranks 0,2 called allreduce_async of 386 float32"), std::string::npos)
      << r.finding;
}

TEST(FlightTriage, AMismatchOfCountsIsADivergence) {
  TempDir dir;
  auto ranks = make_ranks(3);
  steps(ranks, 2);
  ranks[0].data_call(FlightOp::Allreduce, 386);
  ranks[1].data_call(FlightOp::Allreduce, 386);
  ranks[2].data_call(FlightOp::Allreduce, 385);
  const TriageReport r = triage_flight_dumps(dumps_of(ranks, dir));
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.culprits, std::vector<int>{2});
  EXPECT_NE(r.finding.find("rank 2 called allreduce of 385 float32"), std::string::npos)
      << r.finding;
}

TEST(FlightTriage, NamesAMissingDump) {
  TempDir dir;
  auto ranks = make_ranks(3);
  steps(ranks, 5);
  std::vector<FlightDump> dumps = dumps_of(ranks, dir);
  dumps.erase(dumps.begin() + 1);
  const TriageReport r = triage_flight_dumps(dumps);
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.culprits, std::vector<int>{1});
  EXPECT_NE(r.finding.find("rank 1 of 3 left no dump"), std::string::npos) << r.finding;
}

TEST(FlightTriage, NoDumpsIsAnError) {
  TempDir dir;
  EXPECT_EQ(triage_flight_dumps({}).code, 2);
  const TriageReport r = triage_flight_directory(dir.path.string());
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.finding.find("holds no flight recorder dumps"), std::string::npos) << r.finding;
  EXPECT_EQ(triage_flight_directory((dir.path / "nowhere").string()).code, 2);
}

TEST(FlightTriage, ReadsAPersistedRingWithoutAnExplicitDump) {
  // persist() maps the file: what is recorded is in it at once (what survives a SIGKILL).
  TempDir dir;
  FlightRecorder recorder(16, 0, 1);
  const int g = recorder.add_group("data", 0, 1, 0);
  recorder.persist(dir.path.string());
  for (std::uint64_t s = 1; s <= 3; ++s) {
    recorder.complete(recorder.begin(g, s, FlightOp::Allreduce, DataType::Float32, 4, 16, -1,
                                     FlightRecorder::now_ns()));
  }
  const FlightDump d = read_flight_dump(recorder.path());
  ASSERT_EQ(d.records.size(), 3u);
  EXPECT_EQ(d.records.back().sequence, 3u);
  EXPECT_EQ(d.header.reason, static_cast<std::uint32_t>(FlightReason::Live));
  recorder.dump(FlightReason::Watchdog);
  EXPECT_EQ(read_flight_dump(recorder.path()).header.reason,
            static_cast<std::uint32_t>(FlightReason::Watchdog));
}

// A one-rank communicator whose non-blocking all-reduce completes when waited on.
class LoopbackCommunicator : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string_view backend() const override { return "loopback"; }
  void allreduce(void*, std::size_t, DataType, ReduceOp) override {}
  std::unique_ptr<Work> allreduce_async(void*, std::size_t, DataType, ReduceOp) override {
    struct Done final : Work {
      void wait() override {}
      bool test() override { return true; }
    };
    return std::make_unique<Done>();
  }
  void reduce_scatter(const void*, void*, std::size_t, DataType, ReduceOp) override {}
  void all_gather(const void*, void*, std::size_t, DataType) override {}
  void broadcast(void*, std::size_t, DataType, int) override {}
  void scatterv(const void*, std::span<const int>, std::span<const int>, void*, int, DataType,
                int) override {}
  void barrier() override {}
};

TEST(FlightRecordingCommunicator, RecordsEveryCollectiveWithItsOwnSequence) {
  TempDir dir;
  auto recorder = std::make_shared<FlightRecorder>(32, 0, 1);
  const int g = recorder->add_group("data", 0, 1, 0);
  FlightRecordingCommunicator comm(std::make_shared<LoopbackCommunicator>(), recorder, g);
  float buf[4] = {};
  comm.allreduce(buf, 4, DataType::Float32, ReduceOp::Sum);
  auto work = comm.allreduce_async(buf, 4, DataType::Float32, ReduceOp::Sum);
  comm.barrier();
  comm.broadcast(buf, 4, DataType::Float32, 0);
  const std::string path = (dir.path / "flight-rank0.bin").string();
  recorder->write_copy(path);
  FlightDump d = read_flight_dump(path);
  ASSERT_EQ(d.records.size(), 4u);
  EXPECT_EQ(d.records[1].op, static_cast<int>(FlightOp::AllreduceAsync));
  EXPECT_EQ(d.records[1].end_ns, 0);  // not waited on yet
  EXPECT_EQ(d.records[3].root, 0);
  for (std::uint64_t i = 0; i < 4; ++i) EXPECT_EQ(d.records[i].sequence, i + 1);
  work->wait();
  work.reset();
  recorder->write_copy(path);
  d = read_flight_dump(path);
  EXPECT_GT(d.records[1].end_ns, 0);
  EXPECT_GE(d.records[1].start_ns, d.records[1].enqueue_ns);
  EXPECT_GE(recorder->take_wait_seconds(), 0.0);
}

// A device timer under the test's control: a marked collective "runs" on the device from
// 1000 * handle ns to 1000 * handle + 500 ns once finish(handle) is called.
class FakeTimer final : public DeviceTimer {
 public:
  std::uint64_t before() override { return ++next_; }
  void after(std::uint64_t handle) override { marked_.push_back(handle); }
  void poll(const std::function<void(std::uint64_t, std::int64_t, std::int64_t)>& done) override {
    while (!finished_.empty()) {
      const std::uint64_t h = finished_.front();
      finished_.erase(finished_.begin());
      done(h, static_cast<std::int64_t>(1000 * h), static_cast<std::int64_t>(1000 * h + 500));
    }
  }
  void finish(std::uint64_t handle) { finished_.push_back(handle); }
  std::vector<std::uint64_t> marked_;

 private:
  std::uint64_t next_ = 0;
  std::vector<std::uint64_t> finished_;
};

class TimedLoopback final : public LoopbackCommunicator {
 public:
  DeviceTimer* device_timer() override { return &timer; }
  FakeTimer timer;
};

TEST(FlightRecordingCommunicator, ADeviceTimedCollectiveStaysOpenUntilTheDeviceSaysItEnded) {
  TempDir dir;
  auto recorder = std::make_shared<FlightRecorder>(32, 0, 1);
  const int g = recorder->add_group("data", 0, 1, 0);
  auto inner = std::make_shared<TimedLoopback>();
  FlightRecordingCommunicator comm(inner, recorder, g);
  float buf[4] = {};
  comm.allreduce(buf, 4, DataType::Float32, ReduceOp::Sum);   // handle 1
  auto work = comm.allreduce_async(buf, 4, DataType::Float32, ReduceOp::Sum);  // handle 2
  work->wait();  // returned on the host: says nothing about the device
  work.reset();
  EXPECT_EQ(inner->timer.marked_, (std::vector<std::uint64_t>{1, 2}));
  const std::string path = (dir.path / "flight-rank0.bin").string();
  recorder->write_copy(path);
  FlightDump d = read_flight_dump(path);
  ASSERT_EQ(d.records.size(), 2u);
  EXPECT_EQ(d.records[0].end_ns, 0);  // enqueued, not known to have ended on the device
  EXPECT_EQ(d.records[1].end_ns, 0);
  // The first one ends on the device; the next collective polls and fills it in.
  inner->timer.finish(1);
  comm.barrier();  // handle 3, still open
  recorder->write_copy(path);
  d = read_flight_dump(path);
  ASSERT_EQ(d.records.size(), 3u);
  EXPECT_EQ(d.records[0].start_ns, 1000);
  EXPECT_EQ(d.records[0].end_ns, 1500);
  EXPECT_EQ(d.records[1].end_ns, 0);
  EXPECT_EQ(d.records[2].end_ns, 0);
  inner->timer.finish(2);
  inner->timer.finish(3);
  comm.broadcast(buf, 4, DataType::Float32, 0);
  recorder->write_copy(path);
  d = read_flight_dump(path);
  EXPECT_EQ(d.records[1].start_ns, 2000);
  EXPECT_EQ(d.records[1].end_ns, 2500);
  EXPECT_EQ(d.records[2].end_ns, 3500);
  EXPECT_EQ(d.records[3].end_ns, 0);  // the last: the one a hang would leave open
}

}  // namespace
}  // namespace meshtrain
