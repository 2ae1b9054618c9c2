// Sharded checkpoints (sharded_checkpoint.hpp) at np 1-4: every rank writes what it holds,
// and any layout (data, fsdp, hybrid fsdp, tensor parallel, hybrid tensor parallel) on any
// number of ranks up to the world's reads back exactly the state that was written.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "meshtrain/data/dataset.hpp"
#include "meshtrain/error.hpp"
#include "meshtrain/nn/mlp.hpp"
#include "meshtrain/train/checkpoint.hpp"
#include "meshtrain/train/checkpoint_state.hpp"
#include "meshtrain/train/sharded_checkpoint.hpp"
#include "meshtrain/train/trainer.hpp"
#include "test_support.hpp"

namespace meshtrain {
namespace {

namespace fs = std::filesystem;
using testing::config_error;
using testing::contains;
using testing::groups_over;
using testing::read_file;
using testing::world_rank;
using testing::world_size;
using testing::write_file;

const std::vector<int> kWidths{4, 24, 24, 1};  // every split width divides by 1, 2, 3 and 4

struct Layout {
  std::string name;
  DistributedConfig dist;
};

// The layouts of k ranks.
std::vector<Layout> layouts_of(int k) {
  std::vector<Layout> out{{"data", DistributedConfig{{k}, {"data"}, Strategy::Data}},
                          {"fsdp", DistributedConfig{{k}, {"fsdp"}, Strategy::Fsdp}},
                          {"tp", DistributedConfig{{1, k}, {"data", "model"}, Strategy::Data}}};
  if (k == 4) {
    out.push_back({"hybrid fsdp", DistributedConfig{{2, 2}, {"data", "fsdp"}, Strategy::Fsdp}});
    out.push_back({"tp x data", DistributedConfig{{2, 2}, {"data", "model"}, Strategy::Data}});
  }
  return out;
}

TrainingConfig config_for(const DistributedConfig& dist) {
  TrainingConfig config;
  config.num_epochs = 3;
  config.batch_size = 12;
  config.distributed_config = dist;
  return config;
}

// A directory every rank of the world shares: rank 0's, removed at the end.
class SharedDir {
 public:
  SharedDir() {
    std::string path;
    if (world_rank() == 0) {
      path = (fs::temp_directory_path() / ("meshtrain-sharded-" + std::to_string(::getpid()))).string();
      fs::remove_all(path);
      fs::create_directories(path);
    }
    int size = static_cast<int>(path.size());
    MPI_Bcast(&size, 1, MPI_INT, 0, MPI_COMM_WORLD);
    path.resize(static_cast<std::size_t>(size));
    MPI_Bcast(path.data(), size, MPI_CHAR, 0, MPI_COMM_WORLD);
    path_ = path;
  }
  ~SharedDir() {
    MPI_Barrier(MPI_COMM_WORLD);
    if (world_rank() == 0) fs::remove_all(path_);
  }
  std::string file(const std::string& name) const { return (fs::path(path_) / name).string(); }

 private:
  std::string path_;
};

struct Written {
  TrainingState state;  // gathered: what every reader must get back
  std::string index;
};

// What a sharded write of trainer's current step to index needs.
ShardedCheckpointWriter::Save save_of(const Trainer& trainer, const TrainingConfig& config,
                                      const std::string& index) {
  ShardedCheckpointWriter::Save save;
  save.index_path = index;
  save.index = to_checkpoint_index(trainer.position(), trainer.model(), config, 48);
  save.runs = trainer.held_runs();
  save.state = trainer.local_state();
  save.layout = sharded_layout_of(trainer.model());
  return save;
}

// Trains two steps under `layout` on the whole world and writes a sharded checkpoint.
Written train_and_write(const Layout& layout, const ReferenceData& data, const std::string& index) {
  const TrainingConfig config = config_for(layout.dist);
  Trainer trainer(Mlp(kWidths, Activation::ReLU, 5), config);
  trainer.prepare(data.x, data.y);
  trainer.step(0);
  trainer.step(1);
  Written out{trainer.state(), index};
  ShardedCheckpointWriter writer(trainer.groups().world());
  writer.start(save_of(trainer, config, index));
  EXPECT_EQ(writer.wait(), "");
  return out;
}

// An FSDP trainer over the whole world, prepared.
struct FsdpRun {
  ReferenceData data = make_reference_data(48, 4, 2);
  TrainingConfig config = config_for(DistributedConfig{{world_size()}, {"fsdp"}, Strategy::Fsdp});
  Trainer trainer{Mlp(kWidths, Activation::ReLU, 5), config};
  FsdpRun() { trainer.prepare(data.x, data.y); }
};

// Rank 0: no shard directory is left in dir (a failed write's are removed).
void expect_no_shard_directories(const fs::path& dir) {
  MPI_Barrier(MPI_COMM_WORLD);
  if (world_rank() != 0) return;
  for (const auto& e : fs::directory_iterator(dir)) {
    EXPECT_FALSE(e.path().filename().string().find(".shards-") != std::string::npos) << e.path();
  }
}

std::vector<float> values(const HostVector& v) { return std::vector<float>(v.data(), v.data() + v.extent(0)); }

}  // namespace

TEST(ShardedCheckpoint, EveryLayoutOnEveryRankCountReadsBackTheExactState) {
  const int n = world_size();
  const ReferenceData data = make_reference_data(48, 4, 2);
  SharedDir dir;
  for (const Layout& writer : layouts_of(n)) {
    const Written written = train_and_write(writer, data, dir.file("ckpt-" + writer.name + ".safetensors"));
    // The index holds no tensor; every value is in exactly one shard.
    const Checkpoint index = read_checkpoint(written.index);
    ASSERT_TRUE(is_sharded_index(index.metadata));
    EXPECT_TRUE(index.tensors.empty());
    EXPECT_EQ(index.metadata.at("shard_count"), std::to_string(n));
    for (int m = 1; m <= n; ++m) {
      MPI_Comm sub = MPI_COMM_NULL;
      MPI_Comm_split(MPI_COMM_WORLD, world_rank() < m ? 0 : MPI_UNDEFINED, world_rank(), &sub);
      if (sub == MPI_COMM_NULL) continue;
      for (const Layout& reader : layouts_of(m)) {
        SCOPED_TRACE(writer.name + " on " + std::to_string(n) + " -> " + reader.name + " on " + std::to_string(m));
        const TrainingConfig config = config_for(reader.dist);
        Trainer trainer(Mlp(kWidths, Activation::ReLU, 99), config, groups_over(sub, config));
        trainer.prepare(data.x, data.y);
        const TrainingState position =
            from_checkpoint(read_checkpoint(written.index), written.index, trainer.model(), config, 48);
        EXPECT_EQ(position.parameters.extent(0), 0u);
        ShardSet shards(written.index, read_checkpoint(written.index).metadata, trainer.model().num_parameters());
        EXPECT_EQ(verify_shards(trainer.groups().world(), shards), "");
        LocalState local = trainer.local_state();
        read_local_state(shards, trainer.held_runs(), local);
        trainer.restore(position, local);
        const TrainingState got = trainer.state();
        EXPECT_EQ(values(got.parameters), values(written.state.parameters));
        EXPECT_EQ(values(got.first_moment), values(written.state.first_moment));
        EXPECT_EQ(values(got.second_moment), values(written.state.second_moment));
        EXPECT_EQ(got.optimizer_step, written.state.optimizer_step);
        EXPECT_EQ(got.batch, written.state.batch);
      }
      MPI_Comm_free(&sub);
    }
  }
}

TEST(ShardedCheckpoint, WrittenRunsCoverTheModelOnceUnderEveryLayout) {
  const int n = world_size();
  const ReferenceData data = make_reference_data(48, 4, 2);
  for (const Layout& layout : layouts_of(n)) {
    const TrainingConfig config = config_for(layout.dist);
    Trainer trainer(Mlp(kWidths, Activation::ReLU, 5), config);
    trainer.prepare(data.x, data.y);
    std::vector<int> count(trainer.model().num_parameters(), 0);
    for (const HeldRun& r : trainer.held_runs()) {
      if (!r.write) continue;
      for (std::uint64_t i = r.full; i < r.full + r.length; ++i) ++count.at(i);
    }
    MPI_Allreduce(MPI_IN_PLACE, count.data(), static_cast<int>(count.size()), MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    for (std::size_t i = 0; i < count.size(); ++i) ASSERT_EQ(count[i], 1) << layout.name << " value " << i;
  }
}

TEST(ShardedCheckpoint, DamagedMissingOrForeignShardsAreNamed) {
  const int n = world_size();
  const ReferenceData data = make_reference_data(48, 4, 2);
  SharedDir dir;
  const Layout fsdp{"fsdp", DistributedConfig{{n}, {"fsdp"}, Strategy::Fsdp}};
  const Written a = train_and_write(fsdp, data, dir.file("a.safetensors"));
  const Written b = train_and_write(fsdp, data, dir.file("b.safetensors"));
  const auto shard_path = [&](const Written& w, int s) {
    const auto meta = read_checkpoint(w.index).metadata;
    return dir.file(meta.at("shards_dir") + "/" + shard_file_name(s, n));
  };
  const TrainingConfig config = config_for(fsdp.dist);
  Trainer trainer(Mlp(kWidths, Activation::ReLU, 5), config);
  trainer.prepare(data.x, data.y);
  const auto problem = [&](const Written& w) {
    ShardSet shards(w.index, read_checkpoint(w.index).metadata, trainer.model().num_parameters());
    return verify_shards(trainer.groups().world(), shards);
  };
  const int last = n - 1;
  // One flipped byte in the last shard's data.
  if (world_rank() == 0) {
    std::fstream f(shard_path(a, last), std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(-3, std::ios::end);
    const char c = static_cast<char>(f.get());
    f.seekp(-3, std::ios::end);
    f.put(static_cast<char>(c ^ 0x20));
  }
  MPI_Barrier(MPI_COMM_WORLD);
  std::string p = problem(a);
  EXPECT_TRUE(contains(p, shard_path(a, last)) && contains(p, "checksum mismatch")) << p;
  // Another write's shard in its place (same runs, other id).
  if (world_rank() == 0) fs::copy_file(shard_path(b, last), shard_path(a, last), fs::copy_options::overwrite_existing);
  MPI_Barrier(MPI_COMM_WORLD);
  p = problem(a);
  EXPECT_TRUE(contains(p, shard_path(a, last)) && contains(p, "another checkpoint")) << p;
  // Missing.
  if (world_rank() == 0) fs::remove(shard_path(a, last));
  MPI_Barrier(MPI_COMM_WORLD);
  p = problem(a);
  EXPECT_TRUE(contains(p, shard_path(a, last)) && contains(p, "no such file")) << p;
  // The index's own metadata edited: its checksum refuses it.
  if (world_rank() == 0) {
    std::string bytes = read_file(b.index);
    const auto at = bytes.find("\"optimizer_step\":\"2\"");
    ASSERT_NE(at, std::string::npos);
    bytes[at + 18] = '3';
    write_file(b.index, bytes);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  EXPECT_TRUE(contains(config_error([&] { read_checkpoint(b.index); }), "checksum mismatch"));
}

TEST(ShardedCheckpoint, AFailedWriteIsReportedOnEveryRankAndLeavesNothing) {
  SharedDir dir;
  FsdpRun run;
  // The index cannot be published: a directory is where it must go.
  const std::string index = dir.file("ckpt-7.safetensors");
  if (world_rank() == 0) fs::create_directories(index);
  MPI_Barrier(MPI_COMM_WORLD);
  ShardedCheckpointWriter writer(run.trainer.groups().world());
  writer.start(save_of(run.trainer, run.config, index));
  const std::string error = writer.wait();
  EXPECT_TRUE(contains(error, index) && contains(error, "cannot write checkpoint")) << error;
  expect_no_shard_directories(fs::path(index).parent_path());
}

TEST(ShardedCheckpoint, AShardThatFailsOnTheLastRankEndsTheWriteOnEveryRank) {
  // The last rank's shard cannot be made (a run outside its buffer stands in for a write
  // error): rank 0, which waits for every shard, gives up when wait() shares the failure
  // instead of waiting for a file that will never come.
  SharedDir dir;
  FsdpRun run;
  const Trainer& trainer = run.trainer;
  const TrainingConfig& config = run.config;
  const int n = world_size();
  ShardedCheckpointWriter writer(run.trainer.groups().world());
  writer.set_shard_timeout(3600.0);  // a hang, were the failure not shared
  ShardedCheckpointWriter::Save save = save_of(trainer, config, dir.file("ckpt-3.safetensors"));
  if (world_rank() == n - 1) save.runs.push_back({0, 1u << 30, 1, true});
  writer.start(std::move(save));
  const std::string error = writer.wait();
  EXPECT_TRUE(contains(error, "outside the local buffer")) << error;
  EXPECT_FALSE(fs::exists(dir.file("ckpt-3.safetensors")));
  expect_no_shard_directories(fs::path(dir.file("x")).parent_path());
  // The writer is usable again.
  writer.start(save_of(trainer, config, dir.file("ckpt-4.safetensors")));
  EXPECT_EQ(writer.wait(), "");
  EXPECT_TRUE(fs::exists(dir.file("ckpt-4.safetensors")));
}

}  // namespace meshtrain
