// Training from .npy shards read by rows (Trainer::prepare(RowSource)) equals training on the
// same data in memory exactly: the same batches in the same order, the same rows per rank,
// so the same losses and parameters bit for bit, at every rank count, shuffled, with
// accumulation, validation and a test set, under data parallelism and FSDP.
#include <gtest/gtest.h>
#include <mpi.h>

#include <csignal>
#include <cstring>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "meshtrain/comm/mpi_communicator.hpp"
#include "meshtrain/data/dataset.hpp"
#include "meshtrain/data/npy.hpp"
#include "meshtrain/data/row_source.hpp"
#include "meshtrain/train/trainer.hpp"
#include "test_support.hpp"

using namespace meshtrain;
using meshtrain::testing::TempDir;

namespace {

std::vector<float> host_params(const Model& model) {
  HostVector p = model.parameters_on_host();
  return std::vector<float>(p.data(), p.data() + p.extent(0));
}

// Rows [begin, end) of m written as a .npy file.
void write_rows(const std::string& path, const HostMatrix& m, std::size_t begin, std::size_t end) {
  write_npy(path, {end - begin, m.extent(1)}, m.data() + begin * m.extent(1));
}

// Rank 0 writes the sets into a directory every rank sees (its path broadcast): x in uneven
// shards (one of a single row), y in one file, the held-out sets as shards under globs.
struct Files {
  std::unique_ptr<TempDir> dir;  // rank 0's, removed at the end
  std::string root;
};

Files write_files(const ReferenceData& train, const ReferenceData& val, const ReferenceData& test) {
  Files files;
  MpiCommunicator world(MPI_COMM_WORLD);
  std::string path;
  if (world.rank() == 0) {
    files.dir = std::make_unique<TempDir>("meshtrain-sharded");
    const std::filesystem::path root = files.dir->path();
    std::filesystem::create_directories(root / "train_x");
    write_rows((root / "train_x" / "a.npy").string(), train.x, 0, 20);
    write_rows((root / "train_x" / "b.npy").string(), train.x, 20, 21);
    write_rows((root / "train_x" / "c.npy").string(), train.x, 21, train.x.extent(0));
    write_rows((root / "train_y.npy").string(), train.y, 0, train.y.extent(0));
    for (const auto& [name, set] : {std::pair<std::string, const ReferenceData*>{"val", &val},
                                    std::pair<std::string, const ReferenceData*>{"test", &test}}) {
      const std::size_t n = set->x.extent(0), half = n / 2;
      write_rows((root / (name + "_x0.npy")).string(), set->x, 0, half);
      write_rows((root / (name + "_x1.npy")).string(), set->x, half, n);
      write_rows((root / (name + "_y0.npy")).string(), set->y, 0, n);
    }
    path = root.string();
  }
  std::int32_t length = static_cast<std::int32_t>(path.size());
  world.broadcast(std::span<std::int32_t>(&length, 1), 0);
  std::vector<std::int32_t> chars(path.begin(), path.end());
  chars.resize(static_cast<std::size_t>(length));
  world.broadcast(std::span<std::int32_t>(chars), 0);
  files.root.assign(chars.begin(), chars.end());
  return files;
}

std::shared_ptr<const RowSource> source(const std::string& x, const std::string& y) {
  return std::make_shared<NpyRowSource>(NpyShards::open(x), NpyShards::open(y));
}

void expect_same_run(const FitResult& a, const FitResult& b) {
  EXPECT_EQ(a.metrics.epoch_losses, b.metrics.epoch_losses);
  ASSERT_EQ(a.metrics.validation_losses.size(), b.metrics.validation_losses.size());
  for (std::size_t e = 0; e < a.metrics.validation_losses.size(); ++e) {
    EXPECT_EQ(a.metrics.validation_losses[e], b.metrics.validation_losses[e]) << "epoch " << e;
    EXPECT_EQ(a.metrics.test_losses[e], b.metrics.test_losses[e]) << "epoch " << e;
  }
  EXPECT_EQ(a.metrics.steps, b.metrics.steps);
  const auto pa = host_params(a.model), pb = host_params(b.model);
  ASSERT_EQ(pa.size(), pb.size());
  EXPECT_EQ(std::memcmp(pa.data(), pb.data(), pa.size() * sizeof(float)), 0) << "parameters differ";
}

struct Setting {
  bool shuffle;
  int accumulation;
  Strategy strategy;
};

}  // namespace

TEST(ShardedLoading, EqualsTheInMemoryPathExactly) {
  const ReferenceData train = make_reference_data(45, 4, 1);  // batches of 10: a partial last
  const ReferenceData val = make_reference_data(23, 4, 2);
  const ReferenceData test = make_reference_data(9, 4, 3);
  const Files files = write_files(train, val, test);
  const std::string& root = files.root;
  for (const Setting& s : {Setting{true, 1, Strategy::Data}, Setting{false, 1, Strategy::Data},
                           Setting{true, 2, Strategy::Data}, Setting{true, 1, Strategy::Fsdp}}) {
    SCOPED_TRACE("shuffle " + std::to_string(s.shuffle) + ", accumulation " +
                 std::to_string(s.accumulation) + ", strategy " + name_of(s.strategy));
    TrainingConfig config;
    config.num_epochs = 3;
    config.batch_size = 10;
    config.shuffle = s.shuffle;
    config.accumulation_steps = s.accumulation;
    config.distributed_config.strategy = s.strategy;
    config.learning_rate = 0.01;

    Trainer memory(Mlp({4, 8, 1}, Activation::ReLU, 1), config);
    memory.set_validation_data(val.x, val.y);
    memory.set_test_data(test.x, test.y);
    const FitResult a = memory.fit(train.x, train.y);

    Trainer sharded(Mlp({4, 8, 1}, Activation::ReLU, 1), config);
    sharded.set_validation_data(source(root + "/val_x*.npy", root + "/val_y0.npy"));
    sharded.set_test_data(source(root + "/test_x?.npy", root + "/test_y0.npy"));
    sharded.prepare(source(root + "/train_x", root + "/train_y.npy"));
    // No set is held: a step's rows (device buffer and the two prefetch buffers) and the
    // held-out chunk.
    const DataBytes held = sharded.data_bytes();
    EXPECT_EQ(held.sets, 0u);
    EXPECT_GT(held.batches, 0u);
    EXPECT_GT(memory.data_bytes().sets, 0u);
    const FitResult b = sharded.fit();
    expect_same_run(a, b);
    EXPECT_GE(b.metrics.data_wait_seconds, 0.0);
    EXPECT_EQ(a.metrics.data_wait_seconds, 0.0);
  }
}

TEST(ShardedLoading, ResumesBitIdentically) {
  const ReferenceData train = make_reference_data(45, 4, 1);
  const ReferenceData val = make_reference_data(23, 4, 2);
  const Files files = write_files(train, val, val);
  const std::string& root = files.root;
  TrainingConfig config;
  config.num_epochs = 3;
  config.batch_size = 10;
  config.shuffle = true;
  Trainer straight(Mlp({4, 8, 1}, Activation::ReLU, 1), config);
  straight.prepare(source(root + "/train_x", root + "/train_y.npy"));
  const FitResult a = straight.fit();

  // Stopped by the stop flag after the first step of epoch 2 (mid-epoch), and continued by
  // another trainer from that state.
  Trainer first(Mlp({4, 8, 1}, Activation::ReLU, 1), config);
  first.prepare(source(root + "/train_x", root + "/train_y.npy"));
  volatile std::sig_atomic_t stop = 0;
  first.set_stop_flag(&stop);
  first.set_epoch_callback([&](const EpochReport&) { stop = 1; });
  const FitResult stopped = first.fit();
  ASSERT_TRUE(stopped.metrics.stopped);
  const TrainingState state = first.state();
  ASSERT_EQ(state.epoch, 1);
  ASSERT_EQ(state.batch, 1u);
  Trainer second(Mlp({4, 8, 1}, Activation::ReLU, 2), config);  // other initial parameters
  second.prepare(source(root + "/train_x", root + "/train_y.npy"));
  second.restore(state);
  const FitResult b = second.fit();
  const auto pa = host_params(a.model), pb = host_params(b.model);
  EXPECT_EQ(std::memcmp(pa.data(), pb.data(), pa.size() * sizeof(float)), 0);
  EXPECT_EQ(a.metrics.final_loss, b.metrics.final_loss);
}
