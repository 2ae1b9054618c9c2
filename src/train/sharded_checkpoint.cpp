#include "meshtrain/train/sharded_checkpoint.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <stdexcept>
#include <thread>

#include "meshtrain/clock.hpp"
#include "meshtrain/comm/broadcast.hpp"
#include "meshtrain/error.hpp"

namespace meshtrain {

namespace fs = std::filesystem;
using nlohmann::json;

std::vector<HeldRun> split_for_writing(std::uint64_t begin, std::uint64_t end, int part,
                                       int parts) {
  const std::uint64_t n = end - begin;
  const auto p = static_cast<std::uint64_t>(part);
  const auto k = static_cast<std::uint64_t>(parts);
  const std::uint64_t base = n / k;
  const std::uint64_t extra = n % k;
  const std::uint64_t from = begin + p * base + std::min(p, extra);
  const std::uint64_t to = from + base + (p < extra ? 1 : 0);
  std::vector<HeldRun> runs;
  if (from > begin) runs.push_back({begin, begin, from - begin, false});
  if (to > from) runs.push_back({from, from, to - from, true});
  if (end > to) runs.push_back({to, to, end - to, false});
  return runs;
}

namespace {

constexpr const char* kShardFormat = "training_state_shard";

[[noreturn]] void fail(const std::string& path, const std::string& why) {
  throw ConfigError(path + ": " + why);
}

std::string runs_text(const std::vector<HeldRun>& runs) {
  std::string out;
  for (const HeldRun& r : runs) {
    if (!out.empty()) out += ',';
    out += std::to_string(r.full) + ':' + std::to_string(r.length);
  }
  return out;
}

std::uint64_t to_u64(const std::string& path, const std::string& text, const char* what) {
  std::uint64_t value = 0;
  const auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || ec != std::errc() || ptr != text.data() + text.size()) {
    fail(path, std::string("metadata ") + what + " '" + text + "' is not a non-negative integer");
  }
  return value;
}

struct FileRun {
  std::uint64_t full = 0;
  std::uint64_t length = 0;
};

std::vector<FileRun> parse_runs_text(const std::string& path, const std::string& text) {
  std::vector<FileRun> runs;
  std::size_t start = 0;
  while (start < text.size()) {
    const std::size_t end = std::min(text.find(',', start), text.size());
    const std::string item = text.substr(start, end - start);
    const std::size_t colon = item.find(':');
    if (colon == std::string::npos) fail(path, "metadata runs: '" + item + "' is not full:length");
    runs.push_back({to_u64(path, item.substr(0, colon), "runs"), to_u64(path, item.substr(colon + 1), "runs")});
    start = end + 1;
  }
  return runs;
}

const std::string& metadata_text(const std::string& path, const std::map<std::string, std::string>& m,
                                 const std::string& key) {
  const auto it = m.find(key);
  if (it == m.end()) fail(path, "metadata " + key + " is missing");
  return it->second;
}

// Every value of [0, parameters) in exactly one run: ConfigError naming path otherwise.
void check_cover(const std::string& path, std::vector<FileRun> runs, std::uint64_t parameters) {
  std::sort(runs.begin(), runs.end(), [](const FileRun& a, const FileRun& b) { return a.full < b.full; });
  std::uint64_t next = 0;
  for (const FileRun& r : runs) {
    if (r.length == 0) continue;
    if (r.full != next) {
      fail(path, r.full < next ? "the shards hold value " + std::to_string(r.full) + " twice"
                               : "no shard holds values " + std::to_string(next) + " to " +
                                     std::to_string(r.full - 1));
    }
    next = r.full + r.length;
  }
  if (next != parameters) {
    fail(path, "the shards hold " + std::to_string(next) + " of the model's " + std::to_string(parameters) +
                   " values");
  }
}

std::string random_id() {
  std::random_device device;
  const std::uint64_t value = (std::uint64_t{device()} << 32) ^ device();
  char text[17];
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(value));
  return std::string(text, 8);
}

std::string system_error_text() { return std::strerror(errno); }

}  // namespace

const std::vector<std::string>& shard_groups() {
  static const std::vector<std::string> groups{"params", "adam/mu", "adam/nu"};
  return groups;
}

std::vector<float>& group_of(LocalState& state, std::size_t group) {
  return group == 0 ? state.parameters : group == 1 ? state.first_moment : state.second_moment;
}
const std::vector<float>& group_of(const LocalState& state, std::size_t group) {
  return group_of(const_cast<LocalState&>(state), group);
}

bool is_sharded_index(const std::map<std::string, std::string>& metadata) {
  const auto it = metadata.find("meshtrain.format");
  return it != metadata.end() && it->second == kShardedIndexFormat;
}

std::string shards_directory(const std::string& index_path, const std::string& checkpoint_id) {
  std::string base = index_path;
  const std::string suffix = ".safetensors";
  if (base.size() > suffix.size() && base.compare(base.size() - suffix.size(), suffix.size(), suffix) == 0)
    base.resize(base.size() - suffix.size());
  return base + ".shards-" + checkpoint_id;
}

std::string shard_file_name(int shard, int count) {
  char name[64];
  std::snprintf(name, sizeof name, "shard-%05d-of-%05d.safetensors", shard, count);
  return name;
}

void write_shard(const std::string& shards_dir, const std::string& checkpoint_id, int shard,
                 int count, const std::vector<HeldRun>& runs, const LocalState& state) {
  Checkpoint file;
  std::vector<HeldRun> written;
  std::uint64_t total = 0;
  for (const HeldRun& r : runs) {
    if (r.write && r.length > 0) {
      written.push_back(r);
      total += r.length;
    }
  }
  for (std::size_t g = 0; g < shard_groups().size(); ++g) {
    const std::vector<float>& local = group_of(state, g);
    if (local.empty()) continue;
    CheckpointTensor tensor{shard_groups()[g], {static_cast<std::size_t>(total)}, {}};
    tensor.values.reserve(total);
    for (const HeldRun& r : written) {
      if (r.local + r.length > local.size()) {
        throw std::logic_error("write_shard: run [" + std::to_string(r.local) + ", +" +
                               std::to_string(r.length) + ") outside the local buffer of " +
                               std::to_string(local.size()));
      }
      tensor.values.insert(tensor.values.end(), local.begin() + static_cast<std::ptrdiff_t>(r.local),
                           local.begin() + static_cast<std::ptrdiff_t>(r.local + r.length));
    }
    file.tensors.push_back(std::move(tensor));
  }
  file.metadata["meshtrain.format"] = kShardFormat;
  file.metadata["checkpoint_id"] = checkpoint_id;
  file.metadata["shard"] = std::to_string(shard);
  file.metadata["shard_count"] = std::to_string(count);
  file.metadata["runs"] = runs_text(written);
  write_checkpoint_atomic((fs::path(shards_dir) / shard_file_name(shard, count)).string(), file);
}

std::map<std::string, std::string> shard_index_entries(const std::string& shards_dir,
                                                       const std::string& checkpoint_id,
                                                       int count, const ShardedLayout& layout) {
  json shards = json::array();
  std::vector<FileRun> all;
  for (int s = 0; s < count; ++s) {
    const std::string path = (fs::path(shards_dir) / shard_file_name(s, count)).string();
    const CheckpointLayout file = read_checkpoint_layout(path);
    if (metadata_text(path, file.metadata, "checkpoint_id") != checkpoint_id) {
      fail(path, "belongs to another checkpoint write");
    }
    const std::vector<FileRun> runs = parse_runs_text(path, metadata_text(path, file.metadata, "runs"));
    json entry;
    entry["file"] = shard_file_name(s, count);
    entry["bytes"] = file.file_size;
    json list = json::array();
    for (const FileRun& r : runs) {
      list.push_back({r.full, r.length});
      all.push_back(r);
    }
    entry["runs"] = std::move(list);
    shards.push_back(std::move(entry));
  }
  check_cover(shards_dir, all, layout.parameters);
  json tensors = json::array();
  for (const ShardedLayout::Tensor& t : layout.tensors) {
    tensors.push_back({{"name", t.name}, {"shape", t.shape}, {"offset", t.offset}, {"partition", t.partition}});
  }
  return {{"meshtrain.format", kShardedIndexFormat},
          {"checkpoint_id", checkpoint_id},
          {"shards_dir", fs::path(shards_dir).filename().string()},
          {"shard_count", std::to_string(count)},
          {"parameters", std::to_string(layout.parameters)},
          {"shards", shards.dump()},
          {"tensors", tensors.dump()}};
}

// ---- ShardSet

struct ShardSet::Impl {
  struct Shard {
    std::string path;
    std::uint64_t bytes = 0;
    std::vector<FileRun> runs;
    std::string runs_text;
    // Opened on first read: the file and each group's first byte.
    mutable int fd = -1;
    mutable std::vector<std::int64_t> group_offset;  // -1: absent
  };
  // Every run of every shard, by full offset: where its values start in its shard's tensors.
  struct Located {
    std::uint64_t full = 0;
    std::uint64_t length = 0;
    std::size_t shard = 0;
    std::uint64_t position = 0;  // values before it in the shard's tensors
  };
  std::string index_path;
  std::string checkpoint_id;
  std::vector<Shard> shards;
  std::vector<Located> located;

  ~Impl() {
    for (Shard& s : shards) {
      if (s.fd >= 0) ::close(s.fd);
    }
  }

  void open(const Shard& shard) const {
    if (shard.fd >= 0) return;
    const CheckpointLayout layout = read_checkpoint_layout(shard.path);
    shard.group_offset.assign(shard_groups().size(), -1);
    std::uint64_t values = 0;
    for (const FileRun& r : shard.runs) values += r.length;
    for (std::size_t g = 0; g < shard_groups().size(); ++g) {
      if (const CheckpointLayout::Tensor* t = layout.find(shard_groups()[g])) {
        if (t->bytes != values * sizeof(float)) {
          fail(shard.path, "tensor " + t->name + " holds " + std::to_string(t->bytes / sizeof(float)) +
                               " values, its runs " + std::to_string(values));
        }
        shard.group_offset[g] = static_cast<std::int64_t>(t->offset);
      }
    }
    shard.fd = ::open(shard.path.c_str(), O_RDONLY | O_CLOEXEC);
    if (shard.fd < 0) fail(shard.path, "cannot open: " + system_error_text());
  }
};

ShardSet::ShardSet(const std::string& index_path, const std::map<std::string, std::string>& metadata,
                   std::uint64_t parameters)
    : impl_(std::make_unique<Impl>()) {
  impl_->index_path = index_path;
  impl_->checkpoint_id = metadata_text(index_path, metadata, "checkpoint_id");
  const std::string& dir_name = metadata_text(index_path, metadata, "shards_dir");
  if (dir_name.empty() || dir_name.find('/') != std::string::npos || dir_name == "." || dir_name == "..") {
    fail(index_path, "metadata shards_dir '" + dir_name + "' is not a directory name");
  }
  const fs::path dir = fs::path(index_path).parent_path() / dir_name;
  const std::uint64_t stored = to_u64(index_path, metadata_text(index_path, metadata, "parameters"), "parameters");
  if (stored != parameters) {
    fail(index_path, "holds " + std::to_string(stored) + " values per tensor group, this model " +
                         std::to_string(parameters));
  }
  json shards;
  try {
    shards = json::parse(metadata_text(index_path, metadata, "shards"));
  } catch (const json::exception& e) {
    fail(index_path, std::string("metadata shards is not valid JSON: ") + e.what());
  }
  const std::uint64_t count = to_u64(index_path, metadata_text(index_path, metadata, "shard_count"), "shard_count");
  if (!shards.is_array() || shards.size() != count || count == 0) {
    fail(index_path, "metadata shards must list shard_count = " + std::to_string(count) + " shards");
  }
  std::vector<FileRun> all;
  try {
    for (const json& entry : shards) {
      Impl::Shard shard;
      const std::string file = entry.at("file").get<std::string>();
      if (file.empty() || file.find('/') != std::string::npos) fail(index_path, "shard file '" + file + "'");
      shard.path = (dir / file).string();
      shard.bytes = entry.at("bytes").get<std::uint64_t>();
      std::vector<HeldRun> as_held;
      std::uint64_t position = 0;
      for (const json& r : entry.at("runs")) {
        const FileRun run{r.at(0).get<std::uint64_t>(), r.at(1).get<std::uint64_t>()};
        if (run.length == 0) continue;
        shard.runs.push_back(run);
        as_held.push_back({run.full, 0, run.length, true});
        impl_->located.push_back({run.full, run.length, impl_->shards.size(), position});
        position += run.length;
        all.push_back(run);
      }
      shard.runs_text = runs_text(as_held);
      impl_->shards.push_back(std::move(shard));
    }
  } catch (const json::exception& e) {
    fail(index_path, std::string("metadata shards: ") + e.what());
  }
  check_cover(index_path, all, parameters);
  std::sort(impl_->located.begin(), impl_->located.end(),
            [](const Impl::Located& a, const Impl::Located& b) { return a.full < b.full; });
}

ShardSet::~ShardSet() = default;

std::size_t ShardSet::count() const { return impl_->shards.size(); }
const std::string& ShardSet::path(std::size_t shard) const { return impl_->shards.at(shard).path; }

void ShardSet::verify(std::size_t index) const {
  const Impl::Shard& shard = impl_->shards.at(index);
  verify_checkpoint_file(shard.path);
  const CheckpointLayout layout = read_checkpoint_layout(shard.path);
  if (layout.file_size != shard.bytes) {
    fail(shard.path, std::to_string(layout.file_size) + " bytes, the index " + impl_->index_path + " says " +
                         std::to_string(shard.bytes));
  }
  if (metadata_text(shard.path, layout.metadata, "checkpoint_id") != impl_->checkpoint_id) {
    fail(shard.path, "belongs to another checkpoint than its index " + impl_->index_path);
  }
  if (metadata_text(shard.path, layout.metadata, "runs") != shard.runs_text) {
    fail(shard.path, "holds other runs than its index " + impl_->index_path + " says");
  }
}

void ShardSet::read(std::size_t group, std::uint64_t full, std::uint64_t length, float* out) const {
  const auto& located = impl_->located;
  // The last run starting at or before full.
  auto it = std::upper_bound(located.begin(), located.end(), full,
                             [](std::uint64_t value, const Impl::Located& r) { return value < r.full; });
  if (it == located.begin()) fail(impl_->index_path, "no shard holds value " + std::to_string(full));
  --it;
  while (length > 0) {
    if (it == located.end() || full < it->full || full >= it->full + it->length) {
      fail(impl_->index_path, "no shard holds value " + std::to_string(full));
    }
    const Impl::Shard& shard = impl_->shards[it->shard];
    impl_->open(shard);
    if (shard.group_offset[group] < 0) {
      fail(shard.path, "has no tensor " + shard_groups()[group]);
    }
    const std::uint64_t skip = full - it->full;
    const std::uint64_t n = std::min(length, it->length - skip);
    auto offset = static_cast<off_t>(static_cast<std::uint64_t>(shard.group_offset[group]) +
                                     (it->position + skip) * sizeof(float));
    auto* bytes = reinterpret_cast<char*>(out);
    std::size_t left = static_cast<std::size_t>(n * sizeof(float));
    while (left > 0) {
      const ssize_t got = ::pread(shard.fd, bytes, left, offset);
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) fail(shard.path, got < 0 ? "cannot read: " + system_error_text() : "truncated");
      bytes += got;
      offset += got;
      left -= static_cast<std::size_t>(got);
    }
    out += n;
    full += n;
    length -= n;
    ++it;
  }
}

Checkpoint consolidate_sharded(const std::string& index_path) {
  const Checkpoint index = read_checkpoint(index_path);
  if (!is_sharded_index(index.metadata)) {
    fail(index_path, "not a sharded checkpoint's index (metadata meshtrain.format is not '" +
                         std::string(kShardedIndexFormat) + "')");
  }
  const std::uint64_t parameters =
      to_u64(index_path, metadata_text(index_path, index.metadata, "parameters"), "parameters");
  ShardSet shards(index_path, index.metadata, parameters);
  for (std::size_t s = 0; s < shards.count(); ++s) shards.verify(s);
  // The groups the shards hold (every shard holds the same ones).
  const CheckpointLayout first = read_checkpoint_layout(shards.path(0));
  std::vector<std::size_t> groups;
  for (std::size_t g = 0; g < shard_groups().size(); ++g) {
    if (first.find(shard_groups()[g])) groups.push_back(g);
  }
  json tensors;
  try {
    tensors = json::parse(metadata_text(index_path, index.metadata, "tensors"));
  } catch (const json::exception& e) {
    fail(index_path, std::string("metadata tensors is not valid JSON: ") + e.what());
  }
  Checkpoint out;
  try {
    for (const std::size_t g : groups) {
      std::vector<float> flat(parameters);
      shards.read(g, 0, parameters, flat.data());
      for (const json& t : tensors) {
        const auto offset = t.at("offset").get<std::uint64_t>();
        const auto shape = t.at("shape").get<std::vector<std::size_t>>();
        std::uint64_t size = 1;
        for (const std::size_t d : shape) size *= d;
        if (offset + size > parameters) fail(index_path, "tensor " + t.at("name").get<std::string>() + " runs past the values");
        out.tensors.push_back({shard_groups()[g] + "/" + t.at("name").get<std::string>(), shape,
                               std::vector<float>(flat.begin() + static_cast<std::ptrdiff_t>(offset),
                                                  flat.begin() + static_cast<std::ptrdiff_t>(offset + size))});
      }
    }
  } catch (const json::exception& e) {
    fail(index_path, std::string("metadata tensors: ") + e.what());
  }
  out.metadata = index.metadata;
  for (const char* key : {"checkpoint_id", "shards_dir", "shard_count", "parameters", "shards", "tensors"}) {
    out.metadata.erase(key);
  }
  out.metadata["meshtrain.format"] = "training_state";
  out.metadata["consolidated_from"] = fs::path(index_path).filename().string();
  return out;
}

void on_every_rank_sharing_errors(Communicator& comm, const std::function<void()>& work) {
  std::string error;
  try {
    work();
  } catch (const ConfigError& e) {
    error = e.what();
  } catch (const std::runtime_error& e) {
    error = e.what();
  }
  std::int32_t first = error.empty() ? comm.size() : comm.rank();
  comm.allreduce(std::span<std::int32_t>(&first, 1), ReduceOp::Min);
  if (first == comm.size()) return;
  broadcast_string(comm, error, first);
  throw ConfigError(error);
}

std::string verify_shards(Communicator& comm, const ShardSet& shards) {
  try {
    on_every_rank_sharing_errors(comm, [&] {
      for (std::size_t s = static_cast<std::size_t>(comm.rank()); s < shards.count();
           s += static_cast<std::size_t>(comm.size())) {
        shards.verify(s);
      }
    });
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

void read_local_state(const ShardSet& shards, const std::vector<HeldRun>& runs, LocalState& state) {
  for (std::size_t g = 0; g < shard_groups().size(); ++g) {
    std::vector<float>& values = group_of(state, g);
    if (values.empty()) continue;
    std::fill(values.begin(), values.end(), 0.0f);
    for (const HeldRun& r : runs) {
      if (r.local + r.length > values.size()) throw std::logic_error("read_local_state: run outside the buffer");
      shards.read(g, r.full, r.length, values.data() + r.local);
    }
  }
}

// ---- ShardedCheckpointWriter

struct ShardedCheckpointWriter::Job {
  Save save;
  std::string id;
  std::string dir;
  int rank = 0;
  int count = 1;
  double timeout = 600.0;
  double began = 0.0;
  double published = 0.0;
  bool committed = false;
  std::atomic<bool> cancel{false};  // rank 0: wait() learnt that another rank's shard failed
  // Rank 0: when to stop waiting for the other shards (seconds, now_seconds()'s clock); set
  // by the destructor, which must not wait long for shards that may never come.
  std::atomic<double> give_up_at{std::numeric_limits<double>::infinity()};
  std::string error;
  std::thread thread;

  std::string shard_path(int s) const { return (fs::path(dir) / shard_file_name(s, count)).string(); }

  void run() {
    try {
      write_shard(dir, id, rank, count, save.runs, save.state);
    } catch (const std::exception& e) {
      error = e.what();
      return;
    }
    if (rank != 0) return;
    try {
      commit();
    } catch (const std::exception& e) {
      error = e.what();
    }
  }

  // Rank 0: every shard on disk, then the index, published by its rename.
  void commit() {
    double last_progress = now_seconds();
    for (int s = 1; s < count;) {
      std::error_code ec;
      if (fs::exists(shard_path(s), ec)) {
        ++s;
        last_progress = now_seconds();
        continue;
      }
      if (cancel.load()) throw std::runtime_error("cancelled: another rank's shard failed");
      if (now_seconds() > give_up_at.load()) throw std::runtime_error("abandoned: the run ended");
      if (now_seconds() - last_progress > timeout) {
        throw std::runtime_error(shard_path(s) + ": not written after " + std::to_string(static_cast<int>(timeout)) +
                                 " s (is checkpoint.dir on a file system every rank shares?)");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    Checkpoint index = save.index;
    for (auto& [key, value] : shard_index_entries(dir, id, count, save.layout)) index.metadata[key] = value;
    write_checkpoint_atomic(save.index_path, index);
    committed = true;
    published = now_seconds();
    if (save.after_commit) save.after_commit();
  }
};

ShardedCheckpointWriter::ShardedCheckpointWriter(Communicator& comm) : comm_(comm) {}

// A write still pending here means the run is ending without wait() (an error elsewhere):
// the other ranks may be gone, so rank 0 gives their shards a few seconds more, not the
// shard timeout. An unpublished write leaves shards no index names (removed by the next run).
ShardedCheckpointWriter::~ShardedCheckpointWriter() {
  if (!job_ || !job_->thread.joinable()) return;
  job_->give_up_at = now_seconds() + 10.0;
  job_->thread.join();
}

double ShardedCheckpointWriter::last_write_seconds() const { return write_seconds_; }

void ShardedCheckpointWriter::start(Save save) {
  const std::string previous = wait();
  if (!previous.empty()) throw ConfigError(previous);
  const double began = now_seconds();
  auto job = std::make_unique<Job>();
  job->rank = comm_.rank();
  job->count = comm_.size();
  job->timeout = shard_timeout_;
  job->began = began;
  std::string id;
  on_every_rank_sharing_errors(comm_, [&] {
    if (comm_.rank() != 0) return;
    for (int attempt = 0; attempt < 8 && id.empty(); ++attempt) {
      const std::string candidate = random_id();
      std::error_code ec;
      if (fs::create_directory(shards_directory(save.index_path, candidate), ec)) id = candidate;
      if (ec) {
        throw std::runtime_error(shards_directory(save.index_path, candidate) +
                                 ": cannot create the shard directory: " + ec.message());
      }
    }
    if (id.empty()) throw std::runtime_error(save.index_path + ": cannot find a fresh shard directory name");
  });
  broadcast_string(comm_, id);
  job->id = id;
  job->dir = shards_directory(save.index_path, id);
  job->save = std::move(save);
  Job* raw = job.get();
  job->thread = std::thread([raw] { raw->run(); });
  job_ = std::move(job);
  pending_ = true;
  start_seconds_ = now_seconds() - began;
}

std::string ShardedCheckpointWriter::wait() {
  if (!pending_) return "";
  pending_ = false;
  // First every other rank's shard, so that rank 0's thread, which waits for them, is told
  // when one will never come; then rank 0's shard and the publication.
  const bool root = comm_.rank() == 0;
  if (!root) job_->thread.join();
  std::string error;
  const auto share = [&](bool mine) {
    try {
      on_every_rank_sharing_errors(comm_, [&] {
        if (mine && !job_->error.empty()) throw std::runtime_error(job_->error);
      });
    } catch (const ConfigError& e) {
      error = e.what();
    }
  };
  share(!root);
  if (root) {
    if (!error.empty()) job_->cancel = true;
    job_->thread.join();
  }
  if (error.empty()) share(root);
  if (root) {
    write_seconds_ = job_->committed ? job_->published - job_->began : 0.0;
    if (!error.empty() && !job_->committed) {
      std::error_code ec;
      fs::remove_all(job_->dir, ec);  // never published: nothing refers to it
    }
  }
  job_.reset();
  return error;
}

}  // namespace meshtrain
