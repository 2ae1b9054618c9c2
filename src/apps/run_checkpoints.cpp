#include "run_checkpoints.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <regex>
#include <set>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "meshtrain/clock.hpp"
#include "meshtrain/error.hpp"
#include "meshtrain/train/checkpoint.hpp"
#include "meshtrain/train/checkpoint_state.hpp"
#include "root_io.hpp"

namespace meshtrain::app {

namespace fs = std::filesystem;

namespace {

constexpr const char* kDataCrcKey = "data_crc32";
constexpr const char* kDataKey = "data";

std::string crc_text(std::uint32_t crc) {
  char text[9];
  std::snprintf(text, sizeof text, "%08x", crc);
  return text;
}

std::uint32_t data_crc(const TrainingData& data) {
  std::uint32_t crc = 0;
  for (const HostMatrix* m : {&data.x, &data.y}) crc = crc32(m->data(), m->span() * sizeof(float), crc);
  return crc;
}

std::string data_description(const RunConfig& config) {
  const DataSettings& d = config.data;
  if (!d.synthetic.empty()) {
    return "data.synthetic = \"" + d.synthetic + "\" (" + std::to_string(d.samples) + " samples of " +
           std::to_string(d.dim) + ")";
  }
  return "data.train_x = " + d.train_x + ", data.train_y = " + d.train_y;
}

std::int64_t step_of(const TrainingState& state, std::size_t batches) {
  return static_cast<std::int64_t>(static_cast<std::size_t>(state.epoch) * batches + state.batch);
}

// How many checkpoints this run holds at once: keep_last plus the one being written before
// the oldest is pruned; with keep_last = 0 every one it writes (one per every_epochs epochs,
// plus the last and a preemption's).
std::uint64_t checkpoints_held(const CheckpointSettings& c, int num_epochs) {
  if (c.keep_last > 0) return static_cast<std::uint64_t>(c.keep_last) + 1;
  const int periodic = c.every_epochs > 0 ? num_epochs / c.every_epochs : 0;
  return static_cast<std::uint64_t>(periodic) + 2;
}

std::string names_of(const std::vector<CheckpointFileInfo>& files) {
  std::string out;
  for (std::size_t i = 0; i < files.size() && i < 3; ++i)
    out += (i ? ", " : "") + fs::path(files[i].path).filename().string();
  if (files.size() > 3) out += ", ...";
  return out;
}

}  // namespace

RunCheckpoints::RunCheckpoints(const RunConfig& config, const TrainingData& data, Communicator& comm)
    : settings_(config.checkpoint),
      config_source_(config.source),
      dir_where_(config.where("checkpoint.dir")),
      data_description_(data_description(config)),
      comm_(comm) {
  if (comm_.rank() == 0) data_crc_ = data.sharded() ? data.crc : data_crc(data);
}

RunCheckpoints::~RunCheckpoints() {
  if (lock_fd_ >= 0) ::close(lock_fd_);  // releases the lock
}

// Rank 0: one run at a time per directory and prefix. Two runs started together would both
// find the directory empty, then write checkpoints that --resume latest mixes up.
void RunCheckpoints::lock_directory() {
  const std::string path = (fs::path(settings_.dir) / ("." + settings_.prefix + ".lock")).string();
  lock_fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (lock_fd_ < 0) {
    throw ConfigError(dir_where_ + ": " + settings_.dir + ": cannot open the lock file " + path + ": " +
                      std::strerror(errno));
  }
  if (::flock(lock_fd_, LOCK_EX | LOCK_NB) == 0) return;
  const int error = errno;
  if (error != EWOULDBLOCK) return;  // e.g. ENOLCK: a file system without locks; go on without
  ::close(lock_fd_);
  lock_fd_ = -1;
  throw ConfigError(dir_where_ + ": " + settings_.dir + ": another meshtrain run is using it (it holds " +
                    path + "); wait for it to end, or give this run another checkpoint.dir or checkpoint.prefix");
}

std::optional<ResumePoint> RunCheckpoints::start(const std::string& resume, const Trainer& trainer,
                                                 std::size_t samples) {
  std::optional<ResumePoint> point;
  on_root_sharing_errors(comm_, [&] {
    if (enabled()) {
      // Writable before anything is read: the space needed is checked once the run's own
      // checkpoints there are known.
      prepare_output_directory(dir_where_, settings_.dir, 0, "");
      lock_directory();
    }
    point = resolve(resume, trainer, samples);
    run_id_ = point ? run_id_ : new_run_id();
    if (enabled()) {
      check_directory_contents(point, trainer);
      remove_orphan_shards();
    }
  });
  if (enabled() && settings_.format == CheckpointFormat::Sharded) {
    if (comm_.size() > 1) check_shared_directory();
    writer_ = std::make_unique<ShardedCheckpointWriter>(comm_);
  }
  std::string resumed_path = point ? point->path : "";
  broadcast_string(comm_, resumed_path);
  broadcast_string(comm_, run_id_);
  if (resumed_path.empty()) return std::nullopt;
  if (!point) point.emplace();
  point->path = resumed_path;
  broadcast_state(comm_, point->state, trainer.model().num_parameters());
  // A sharded checkpoint: its index gave the position; each rank reads its own values.
  if (point->state.parameters.extent(0) == 0) point->local = read_shards(resumed_path, trainer);
  published_path_ = resumed_path;
  return point;
}

LocalState RunCheckpoints::read_shards(const std::string& path, const Trainer& trainer) {
  std::unique_ptr<ShardSet> shards;
  const std::string where = "checkpoint " + path + ": ";
  try {
    on_every_rank_sharing_errors(comm_, [&] {
      const Checkpoint index = read_checkpoint(path);  // small; its checksum checked again
      shards = std::make_unique<ShardSet>(path, index.metadata, trainer.model().num_parameters());
    });
  } catch (const ConfigError& e) {
    throw ConfigError(where + e.what());
  }
  const std::string problem = verify_shards(comm_, *shards);
  if (!problem.empty()) throw ConfigError(where + problem);
  LocalState local = trainer.local_state();  // the layout; every value is read over it
  try {
    on_every_rank_sharing_errors(comm_, [&] { read_local_state(*shards, trainer.held_runs(), local); });
  } catch (const ConfigError& e) {
    throw ConfigError(where + e.what());
  }
  return local;
}

// Every rank must see the files of checkpoint.dir that rank 0 writes, or the shards of a
// sharded checkpoint would never come together (rank 0 waits for them).
void RunCheckpoints::check_shared_directory() {
  const std::string probe = (fs::path(settings_.dir) / ("." + settings_.prefix + ".shared-probe")).string();
  std::string token;
  on_root_sharing_errors(comm_, [&] {
    token = new_run_id();
    std::FILE* file = std::fopen(probe.c_str(), "w");
    if (!file || std::fputs(token.c_str(), file) < 0 || std::fclose(file) != 0) {
      throw ConfigError(dir_where_ + ": " + settings_.dir + ": cannot write " + probe + ": " +
                        std::strerror(errno));
    }
  });
  broadcast_string(comm_, token);
  std::string problem;
  try {
    on_every_rank_sharing_errors(comm_, [&] {
      char seen[64] = {};
      std::size_t n = 0;
      if (std::FILE* file = std::fopen(probe.c_str(), "r")) {
        n = std::fread(seen, 1, sizeof seen - 1, file);
        std::fclose(file);
      }
      if (std::string(seen, n) != token) {
        char host[256] = "?";
        ::gethostname(host, sizeof host - 1);
        throw ConfigError(dir_where_ + ": " + settings_.dir + ": rank " + std::to_string(comm_.rank()) +
                          " (on " + host +
                          ") does not see the files rank 0 writes there; sharded checkpoints need a "
                          "directory every rank shares: put it on a shared file system, or set "
                          "checkpoint.format = \"single\"");
      }
    });
  } catch (const ConfigError& e) {
    problem = e.what();
  }
  if (comm_.rank() == 0) ::unlink(probe.c_str());
  if (!problem.empty()) throw ConfigError(problem);
}

// Rank 0: shard directories of this prefix that no checkpoint refers to are writes that
// never completed (the run was killed while writing): nothing can read them.
void RunCheckpoints::remove_orphan_shards() {
  std::set<std::string> referenced;
  for (const std::string& path : list_checkpoints(settings_.dir, settings_.prefix)) {
    for (const std::string& dir : checkpoint_companions(path)) referenced.insert(fs::path(dir).filename().string());
  }
  const std::regex orphan(std::regex_replace(settings_.prefix, std::regex(R"([.^$|()\[\]{}*+?\\-])"), R"(\$&)") +
                          R"(-[0-9]+\.shards-[0-9a-f]{8})");
  std::error_code ec;
  for (const fs::directory_entry& entry : fs::directory_iterator(settings_.dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (std::regex_match(name, orphan) && entry.is_directory(ec) && !referenced.count(name)) {
      fs::remove_all(entry.path(), ec);
    }
  }
}

// Rank 0: the checkpoint to resume, read and checked; sets run_id_ to its run's.
std::optional<ResumePoint> RunCheckpoints::resolve(const std::string& resume, const Trainer& trainer,
                                                   std::size_t samples) {
  if (resume.empty()) return std::nullopt;
  ResumePoint point;
  if (resume == "latest" || resume == "auto") {
    if (!enabled()) {
      throw ConfigError("--resume " + resume + ": checkpoint.dir is not set in " + config_source_);
    }
    const auto paths = list_checkpoints(settings_.dir, settings_.prefix);
    if (paths.empty()) {
      if (resume == "auto") return std::nullopt;  // nothing to continue: a fresh run
      throw ConfigError("--resume latest: no checkpoints " + settings_.prefix +
                        "-<step>.safetensors in " + settings_.dir +
                        " (--resume auto starts a fresh run then)");
    }
    point.path = paths.back();
  } else {
    point.path = resume;
  }
  Checkpoint checkpoint;
  try {
    checkpoint = read_checkpoint(point.path);
  } catch (const ConfigError& e) {
    throw ConfigError("--resume " + resume + ": " + e.what());
  }
  point.state = from_checkpoint(checkpoint, point.path, trainer.model(), trainer.config(), samples);
  if (point.state.epoch > trainer.config().num_epochs) {
    throw ConfigError("checkpoint " + point.path + ": at epoch " + std::to_string(point.state.epoch) +
                      ", beyond training.num_epochs = " + std::to_string(trainer.config().num_epochs));
  }
  // The training data: the fingerprint has only the sample count. Checkpoints written
  // before the CRC was recorded are not checked.
  if (const auto stored = checkpoint.metadata.find(kDataCrcKey); stored != checkpoint.metadata.end()) {
    const std::string current = crc_text(data_crc_);
    if (stored->second != current) {
      throw ConfigError("checkpoint " + point.path + ": made with other training data (its " +
                        kDataCrcKey + " " + stored->second + ", this run's " + data_description_ +
                        " hash to " + current + ")");
    }
  }
  run_id_ = run_id_of(checkpoint.metadata);
  return point;
}

// Rank 0: refuses (or, with checkpoint.overwrite, moves aside) checkpoints of checkpoint.dir
// that are not this run's past: another run's, unreadable ones, or this run's beyond the
// step it resumes from, after checking the free space for the checkpoints the run will hold.
void RunCheckpoints::check_directory_contents(const std::optional<ResumePoint>& resumed,
                                              const Trainer& trainer) {
  const std::int64_t resumed_step = resumed ? step_of(resumed->state, trainer.batches_per_epoch()) : -1;
  std::vector<CheckpointFileInfo> in_the_way;
  std::uint64_t own = 0;
  for (CheckpointFileInfo& file : describe_checkpoints(settings_.dir, settings_.prefix)) {
    const bool ours = resumed && file.run_id == run_id_ &&
                      static_cast<std::int64_t>(file.step) <= resumed_step;
    if (ours)
      ++own;
    else
      in_the_way.push_back(std::move(file));
  }
  // The space first: nothing is moved for a run that cannot start.
  const std::uint64_t held = checkpoints_held(settings_, trainer.config().num_epochs);
  const std::uint64_t to_write = held > own ? held - own : 1;
  const std::uint64_t size = checkpoint_size_estimate(trainer.model(), trainer.config());
  prepare_output_directory(dir_where_, settings_.dir, to_write * size,
                           std::to_string(to_write) + " more checkpoint(s) of about " + format_bytes(size) +
                               ": keep_last = " + std::to_string(settings_.keep_last) +
                               (settings_.keep_last > 0 ? " plus the one being written"
                                                        : ", every one the run writes"));
  if (!in_the_way.empty()) {
    const bool later_own = resumed && std::all_of(in_the_way.begin(), in_the_way.end(), [&](const auto& f) {
                             return f.run_id == run_id_;
                           });
    const std::string what =
        std::to_string(in_the_way.size()) + " checkpoint(s) " +
        (later_own ? "of this run beyond the one resumed (step " + std::to_string(resumed_step) + ")"
                   : std::string("of another run")) +
        " (" + names_of(in_the_way) + ")";
    if (!settings_.overwrite) {
      throw ConfigError(dir_where_ + ": " + settings_.dir + ": holds " + what +
                        (resumed ? "; resume the newest with --resume latest, or"
                                 : "; continue that run with --resume auto (or latest), or") +
                        " set checkpoint.overwrite = true to move them to " +
                        (fs::path(settings_.dir) / "replaced-<time>").string() + "/");
    }
    std::vector<std::string> paths;
    for (const CheckpointFileInfo& file : in_the_way) paths.push_back(file.path);
    try {
      set_aside_ = move_files_aside(settings_.dir, paths);
    } catch (const ConfigError& e) {
      throw ConfigError(dir_where_ + ": " + e.what());
    }
  }
}

std::string RunCheckpoints::save(Trainer& trainer, std::size_t samples, bool wait) {
  if (!enabled()) return "";
  const double began = now_seconds();
  const TrainingState position = trainer.position();
  const std::int64_t step = step_of(position, trainer.batches_per_epoch());
  if (step == saved_step_) {
    if (wait) finish();
    return saved_path_;
  }
  const std::string path =
      checkpoint_path(settings_.dir, settings_.prefix, static_cast<std::uint64_t>(step));
  const auto describe = [&](Checkpoint& checkpoint) {
    checkpoint.metadata[kRunIdKey] = run_id_;
    checkpoint.metadata[kDataCrcKey] = crc_text(data_crc_);
    checkpoint.metadata[kDataKey] = data_description_;
  };
  const auto intact = [&] {
    return published_path_.empty() ? std::string() : "; the run's checkpoint " + published_path_ + " is intact";
  };
  const auto keep_last = static_cast<std::size_t>(settings_.keep_last);
  if (settings_.format == CheckpointFormat::Single) {
    const TrainingState state = trainer.state();  // collective: the whole state on every rank
    std::string error;
    if (comm_.rank() == 0) {
      Checkpoint checkpoint = to_checkpoint(state, trainer.model(), trainer.config(), samples);
      describe(checkpoint);
      try {
        write_checkpoint_atomic(path, checkpoint);
        prune_run_checkpoints(settings_.dir, settings_.prefix, keep_last, run_id_, path);
      } catch (const std::runtime_error& e) {  // the file system, not the program
        error = e.what() + intact();
      }
    }
    broadcast_string(comm_, error);
    if (!error.empty()) throw ConfigError(dir_where_ + ": " + error);
    published_path_ = path;
  } else {
    finish();  // the previous write, published or failed, before this one starts
    ShardedCheckpointWriter::Save save;
    save.index_path = path;
    if (comm_.rank() == 0) {
      save.index = to_checkpoint_index(position, trainer.model(), trainer.config(), samples);
      describe(save.index);
      save.after_commit = [dir = settings_.dir, prefix = settings_.prefix, keep_last, run = run_id_, path] {
        prune_run_checkpoints(dir, prefix, keep_last, run, path);
      };
    }
    save.runs = trainer.held_runs();
    save.state = trainer.local_state();
    save.layout = sharded_layout_of(trainer.model());
    try {
      writer_->start(std::move(save));
    } catch (const ConfigError& e) {
      throw ConfigError(dir_where_ + ": " + e.what() + intact());
    }
    blocked_seconds_ += now_seconds() - began;
    ++writes_;
  }
  saved_step_ = step;
  saved_path_ = path;
  if (wait) finish();
  return path;
}

void RunCheckpoints::finish() {
  if (!writer_ || !writer_->pending()) return;
  const std::string error = writer_->wait();
  if (!error.empty()) {
    throw ConfigError(dir_where_ + ": " + error +
                      (published_path_.empty() ? "" : "; the run's checkpoint " + published_path_ + " is intact"));
  }
  write_seconds_ += writer_->last_write_seconds();
  published_path_ = saved_path_;
}

}  // namespace meshtrain::app
