// The `meshtrain train` run description: its TOML reference and reader take the choices from
// their tables (meshtrain/choices.hpp), and a library error is located at the key that set its
// field.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "meshtrain/choices.hpp"
#include "meshtrain/error.hpp"
#include "run_config.hpp"
#include "test_support.hpp"

namespace {

using namespace meshtrain;
using namespace meshtrain::app;
using namespace meshtrain::testing;

const std::string kData = "[data]\nsynthetic = \"reference\"\n";

RunConfig parse(const std::string& text, const std::vector<std::string>& sets = {}) {
  return parse_run_config("run.toml", text + kData, sets);
}

// "\"a\" | \"b\"", written here from the table rather than read from the program.
template <class E>
std::string toml_type() {
  std::string out;
  for (const auto& c : choices<E>()) {
    out += (out.empty() ? "\"" : " | \"") + std::string(c.name) + "\"";
  }
  return out;
}

template <class E>
void expect_documented(const std::string& reference, const std::string& key, E default_value) {
  const std::string line_start = "  " + key + " = \"" + name_of(default_value) + "\"";
  const auto at = reference.find(line_start);
  ASSERT_NE(at, std::string::npos) << key << " in\n" << reference;
  const std::string line = reference.substr(at, reference.find('\n', at) - at);
  EXPECT_TRUE(contains(line, toml_type<E>())) << line;
  // The names' help too, where the table has some.
  bool has_help = false;
  for (const auto& c : choices<E>()) has_help = has_help || !c.help.empty();
  if (has_help) {
    EXPECT_TRUE(contains(line, choice_help<E>())) << line;
  }
}

// Each name of E, set through --set section.key=NAME, reads as its value.
template <class E, class Get>
void expect_every_name_read(const std::string& path, Get get) {
  for (const auto& c : choices<E>()) {
    const RunConfig config = parse("", {path + "=" + std::string(c.name)});
    EXPECT_EQ(get(config), c.value) << path << " = " << c.name;
  }
  std::string list;
  for (const auto& name : choice_names<E>()) list += (list.empty() ? "" : ", ") + name;
  EXPECT_EQ(config_error([&] { parse("", {path + "=nope"}); }),
            "--set: " + path + ": 'nope' is not one of " + list);
}

TEST(RunConfigReference, ChoicesComeFromTheTables) {
  const std::string reference = config_reference();
  const TrainingConfig t;
  expect_documented(reference, "optimizer", t.optimizer);
  expect_documented(reference, "nonfinite", t.nonfinite);
  expect_documented(reference, "progress", t.progress);
  expect_documented(reference, "schedule", t.schedule);
  expect_documented(reference, "strategy", t.distributed_config.strategy);
  expect_documented(reference, "comm", t.distributed_config.comm);
  expect_documented(reference, "activation", ModelSettings{}.activation);
  EXPECT_TRUE(contains(reference, "\"auto\" | \"thread\" | \"poll\"")) << reference;
}

TEST(RunConfig, ReadsEveryChoiceByName) {
  expect_every_name_read<OptimizerType>("training.optimizer",
                                        [](const RunConfig& c) { return c.training.optimizer; });
  expect_every_name_read<NonFinite>("training.nonfinite",
                                    [](const RunConfig& c) { return c.training.nonfinite; });
  expect_every_name_read<Progress>("training.progress",
                                   [](const RunConfig& c) { return c.training.progress; });
  expect_every_name_read<Schedule>("training.schedule",
                                   [](const RunConfig& c) { return c.training.schedule; });
  expect_every_name_read<Strategy>(
      "distributed.strategy",
      [](const RunConfig& c) { return c.training.distributed_config.strategy; });
  expect_every_name_read<CommBackend>(
      "distributed.comm", [](const RunConfig& c) { return c.training.distributed_config.comm; });
  expect_every_name_read<Activation>("model.activation",
                                     [](const RunConfig& c) { return c.model.activation; });
}

TEST(RunConfig, LibraryErrorsNameTheKeyThatSetTheField) {
  const RunConfig config = parse(
      "[training]\nbatch_size = 1\nprogress = \"thread\"\n\n[distributed]\ncomm = \"nccl\"\n");
  EXPECT_EQ(locate_library_error(config, ConfigError("batch_size", "1: smaller than the 2 shards")),
            "run.toml:2: training.batch_size 1: smaller than the 2 shards");
  EXPECT_EQ(locate_library_error(config, ConfigError("progress", "'thread': MPI is too old")),
            "run.toml:3: training.progress 'thread': MPI is too old");
  EXPECT_EQ(locate_library_error(config, ConfigError("comm", "'nccl': no GPU")),
            "run.toml:6: distributed.comm 'nccl': no GPU");
  // A field the file does not set: the file, then the key.
  EXPECT_EQ(locate_library_error(config, ConfigError("mesh_shape", "(3,): describes 3 devices")),
            "run.toml: distributed.mesh_shape (3,): describes 3 devices");
  // From --set.
  const RunConfig set = parse("", {"training.num_epochs=2"});
  EXPECT_EQ(locate_library_error(set, ConfigError("num_epochs", "2: x")),
            "--set: training.num_epochs 2: x");
  // Not a field of the run description, or none: unchanged.
  EXPECT_EQ(locate_library_error(config, ConfigError("partition of x", "y")), "partition of x y");
  EXPECT_EQ(locate_library_error(config, ConfigError("batch_size 1: a message")),
            "batch_size 1: a message");
}

TEST(RunConfig, EveryLibraryFieldHasAKey) {
  // The fields TrainingConfig::validate, DistributedConfig::validate and the Trainer name.
  const RunConfig config = parse("");
  for (const std::string field :
       {"num_epochs", "learning_rate", "batch_size", "bucket_bytes", "validation_every",
        "nonfinite", "optimizer", "progress", "mesh_shape", "mesh_axis_names", "strategy", "comm",
        "collective_timeout", "flight_records", "model widths", "activation", "schedule",
        "warmup_steps",
        "warmup_initial_learning_rate", "decay_steps", "min_learning_rate", "step_size",
        "gamma", "clip_grad_norm", "accumulation_steps"}) {
    const std::string located = locate_library_error(config, ConfigError(field, "x: y"));
    // "run.toml: SECTION.KEY x: y"
    ASSERT_TRUE(starts_with(located, "run.toml: ")) << located;
    ASSERT_TRUE(located.ends_with(" x: y")) << located;
    const std::string key = located.substr(10, located.size() - 10 - 5);
    EXPECT_NE(key.find('.'), std::string::npos) << located;
    EXPECT_EQ(key.find(' '), std::string::npos) << located;
  }
}

TEST(RunConfig, ReadsTheScheduleKeys) {
  const RunConfig c = parse(
      "[training]\nschedule = \"warmup_cosine\"\nwarmup_steps = 100\n"
      "warmup_initial_learning_rate = 1e-5\ndecay_steps = 2000\nmin_learning_rate = 1e-6\n");
  EXPECT_EQ(c.training.schedule, Schedule::WarmupCosine);
  EXPECT_EQ(c.training.warmup_steps, 100);
  EXPECT_EQ(c.training.warmup_initial_learning_rate, 1e-5);
  EXPECT_EQ(c.training.decay_steps, 2000);
  EXPECT_EQ(c.training.min_learning_rate, 1e-6);
  EXPECT_NO_THROW(c.training.validate(1));
  const RunConfig step = parse("", {"training.schedule=step", "training.step_size=100",
                                    "training.gamma=0.5"});
  EXPECT_EQ(step.training.step_size, 100);
  EXPECT_EQ(step.training.gamma, 0.5);
  EXPECT_NO_THROW(step.training.validate(1));
  // Ranges of the types here; how the keys fit together in the library, located.
  EXPECT_EQ(config_error([] { parse("", {"training.gamma=0"}); }),
            "--set: training.gamma: 0 is out of range (greater than 0)");
  EXPECT_EQ(config_error([] { parse("", {"training.step_size=0"}); }),
            "--set: training.step_size: 0 is out of range (at least 1)");
  EXPECT_EQ(config_error([] { parse("", {"training.warmup_steps=-1"}); }),
            "--set: training.warmup_steps: -1 is out of range (at least 0)");
  EXPECT_EQ(parse("", {"training.clip_grad_norm=1.5"}).training.clip_grad_norm, 1.5);
  EXPECT_EQ(config_error([] { parse("", {"training.clip_grad_norm=-1"}); }),
            "--set: training.clip_grad_norm: -1 is out of range (at least 0)");
  EXPECT_EQ(parse("", {"training.accumulation_steps=4"}).training.accumulation_steps, 4);
  EXPECT_EQ(config_error([] { parse("", {"training.accumulation_steps=0"}); }),
            "--set: training.accumulation_steps: 0 is out of range (at least 1)");
  const RunConfig unused = parse("[training]\nwarmup_steps = 10\n");
  const ConfigError e = config_error_object([&] { unused.training.validate(1); });
  EXPECT_EQ(locate_library_error(unused, e),
            "run.toml:2: training.warmup_steps 10: only with schedule warmup_cosine or "
            "warmup_constant (this run's is constant)");
}

}  // namespace
