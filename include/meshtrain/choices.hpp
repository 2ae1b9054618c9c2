#pragma once
// The named choices of meshtrain's configuration, each with one table: the value, the name
// users write (flags, TOML, checkpoints' run signatures) and a one-line help. Parsing, error
// messages, --help texts and the TOML reference all read these tables, so that a choice is
// added or renamed in one place. Free of Kokkos and MPI: the programs' option parsing and the
// config structs include it alone.
#include <concepts>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "meshtrain/error.hpp"

namespace meshtrain {

template <class E>
struct Choice {
  E value;
  std::string_view name;
  std::string_view help;  // may be empty; shown in parentheses after the name in --help
};

// An enum E is a named choice when `choice_table(E{})` (found by argument-dependent lookup,
// so an enum of another namespace can have one too) returns its table.
template <class E>
concept NamedChoice = std::is_enum_v<E> && requires(E e) {
  { choice_table(e) } -> std::convertible_to<std::span<const Choice<E>>>;
};

// ---------------------------------------------------------------------------------------
// The choices. Each table's order is the order users read them in (lists, --help).

// How the parameters are spread over the mesh.
enum class Strategy { Data, Fsdp };
inline constexpr Choice<Strategy> kStrategyChoices[] = {
    {Strategy::Data, "data", "data parallel"},
    {Strategy::Fsdp, "fsdp", "fully sharded"},
};
constexpr std::span<const Choice<Strategy>> choice_table(Strategy) { return kStrategyChoices; }

// The library behind the gradient collectives.
enum class CommBackend { Auto, Mpi, Nccl };
inline constexpr Choice<CommBackend> kCommBackendChoices[] = {
    {CommBackend::Auto, "auto", "NCCL when a GPU is visible and NCCL was built"},
    {CommBackend::Mpi, "mpi", ""},
    {CommBackend::Nccl, "nccl", ""},
};
constexpr std::span<const Choice<CommBackend>> choice_table(CommBackend) {
  return kCommBackendChoices;
}

// Optimizers with optax's defaults (see optim/optimizer.hpp).
enum class OptimizerType { Adam, AdamW, Sgd };
inline constexpr Choice<OptimizerType> kOptimizerChoices[] = {
    {OptimizerType::Adam, "adam", ""},
    {OptimizerType::AdamW, "adamw", "adam with decoupled weight decay 1e-4"},
    {OptimizerType::Sgd, "sgd", ""},
};
constexpr std::span<const Choice<OptimizerType>> choice_table(OptimizerType) {
  return kOptimizerChoices;
}

// How the overlapped all-reduces advance while backward computes.
//   Poll:   non-blocking all-reduces (MPI_Iallreduce, or NCCL on its own stream), polled
//           between backward's kernels. MPI moves a non-blocking collective on only inside an
//           MPI call, and on shared memory the copying and summing is done by the polling
//           core itself.
//   Thread: a communication thread per rank runs each bucket's blocking all-reduce (MPI's
//           tuned algorithms, about half the CPU time of the non-blocking ones here) as soon
//           as backward hands it over. It pays off when each rank has a core of its own for
//           it; MPI must provide MPI_THREAD_SERIALIZED (only that thread calls MPI while a
//           step's buckets are in flight).
//   Auto:   the config's default, which the Trainer resolves to one of the two before it
//           builds a GradientReducer (which never takes Auto).
enum class Progress { Auto, Poll, Thread };
inline constexpr Choice<Progress> kProgressChoices[] = {
    {Progress::Auto, "auto", "thread when every rank has a spare core"},
    {Progress::Thread, "thread", "a communication thread per rank; needs a spare core"},
    {Progress::Poll, "poll", "tested between kernels"},
};
constexpr std::span<const Choice<Progress>> choice_table(Progress) { return kProgressChoices; }

// A step whose loss or gradient is NaN or Inf.
enum class NonFinite { Abort, Skip };
inline constexpr Choice<NonFinite> kNonFiniteChoices[] = {
    {NonFinite::Abort, "abort", "end the run with an error"},
    {NonFinite::Skip, "skip", "no update; counted in the metrics"},
};
constexpr std::span<const Choice<NonFinite>> choice_table(NonFinite) { return kNonFiniteChoices; }

// The learning rate of each optimizer step (optax's and PyTorch's schedules; see
// train/schedule.hpp).
enum class Schedule { Constant, WarmupCosine, Step, WarmupConstant };
inline constexpr Choice<Schedule> kScheduleChoices[] = {
    {Schedule::Constant, "constant", "learning_rate throughout"},
    {Schedule::WarmupCosine, "warmup_cosine",
     "linear warmup to learning_rate, then cosine decay to min_learning_rate"},
    {Schedule::Step, "step", "learning_rate times gamma every step_size epochs"},
    {Schedule::WarmupConstant, "warmup_constant", "linear warmup to learning_rate, then constant"},
};
constexpr std::span<const Choice<Schedule>> choice_table(Schedule) { return kScheduleChoices; }

// What `meshtrain train` builds from [model].
enum class ModelType { Mlp, Fno };
inline constexpr Choice<ModelType> kModelTypeChoices[] = {
    {ModelType::Mlp, "mlp", "dense layers: widths, activation"},
    {ModelType::Fno, "fno", "a 2-D Fourier Neural Operator: modes, width, layers, projection"},
};
constexpr std::span<const Choice<ModelType>> choice_table(ModelType) { return kModelTypeChoices; }

// The training loss, a mean over the global batch.
enum class Loss { Mse, RelativeL2 };
inline constexpr Choice<Loss> kLossChoices[] = {
    {Loss::Mse, "mse", "mean squared error over every output"},
    {Loss::RelativeL2, "relative_l2",
     "per-sample ||pred - y|| / ||y||, averaged (the neural-operator papers' metric)"},
};
constexpr std::span<const Choice<Loss>> choice_table(Loss) { return kLossChoices; }

// A floating-point format of training arithmetic or communication
// (training.grad_comm_dtype, training.compute_dtype). Master weights, gradient accumulation
// and optimizer state are fp32 whatever is chosen.
enum class Dtype { Fp32, Bf16 };
inline constexpr Choice<Dtype> kDtypeChoices[] = {
    {Dtype::Fp32, "fp32", "IEEE single precision"},
    {Dtype::Bf16, "bf16", "bfloat16: fp32's range, 8 significant bits, half the bytes"},
};
constexpr std::span<const Choice<Dtype>> choice_table(Dtype) { return kDtypeChoices; }

// After each hidden layer (the output layer is linear).
// Gelu is the exact form x * Phi(x) (PyTorch's default, the FNO's activation).
enum class Normalization { None, Pointwise };
inline constexpr Choice<Normalization> kNormalizationChoices[] = {
    {Normalization::None, "none", "the data as it is"},
    {Normalization::Pointwise, "pointwise",
     "each input feature to zero mean and unit variance over the training samples, and the "
     "output decoded from the targets' statistics (the FNO reference's UnitGaussianNormalizer)"},
};
constexpr std::span<const Choice<Normalization>> choice_table(Normalization) {
  return kNormalizationChoices;
}

// Where the rows of .npy data sets are while a run trains (data.loading).
enum class DataLoading { Memory, Sharded };
inline constexpr Choice<DataLoading> kDataLoadingChoices[] = {
    {DataLoading::Memory, "memory",
     "rank 0 reads the files and broadcasts them; every rank holds every set in memory"},
    {DataLoading::Sharded, "sharded",
     "every rank reads only the rows of its shard of each batch from the files (pread), the "
     "next step's in the background; no rank holds the data set"},
};
constexpr std::span<const Choice<DataLoading>> choice_table(DataLoading) {
  return kDataLoadingChoices;
}

enum class CheckpointFormat { Sharded, Single };
inline constexpr Choice<CheckpointFormat> kCheckpointFormatChoices[] = {
    {CheckpointFormat::Sharded, "sharded",
     "every rank writes its own values, in the background; reads back on any mesh, strategy "
     "and rank count"},
    {CheckpointFormat::Single, "single",
     "rank 0 writes one file of the whole model (gathered), as safetensors' own tools read it"},
};
constexpr std::span<const Choice<CheckpointFormat>> choice_table(CheckpointFormat) {
  return kCheckpointFormatChoices;
}

enum class Activation { Identity, ReLU, Tanh, Gelu };
inline constexpr Choice<Activation> kActivationChoices[] = {
    {Activation::ReLU, "relu", ""},
    {Activation::Tanh, "tanh", ""},
    {Activation::Gelu, "gelu", ""},
    {Activation::Identity, "identity", ""},
};
constexpr std::span<const Choice<Activation>> choice_table(Activation) {
  return kActivationChoices;
}

// ---------------------------------------------------------------------------------------
// Reading the tables.

template <NamedChoice E>
constexpr std::span<const Choice<E>> choices() {
  return choice_table(E{});
}

// The name of value; "?" for a value outside the table (a cast integer).
template <NamedChoice E>
std::string name_of(E value) {
  for (const auto& c : choices<E>()) {
    if (c.value == value) return std::string(c.name);
  }
  return "?";
}

// The names in the table's order.
template <NamedChoice E>
std::vector<std::string> choice_names() {
  std::vector<std::string> out;
  for (const auto& c : choices<E>()) out.emplace_back(c.name);
  return out;
}

namespace detail {
// "a", "a or b", "a, b or c"; each item through item(choice).
template <class E, class F>
std::string join_choices(F&& item) {
  const auto table = choices<E>();
  std::string out;
  for (std::size_t i = 0; i < table.size(); ++i) {
    if (i > 0) out += i + 1 == table.size() ? " or " : ", ";
    out += item(table[i]);
  }
  return out;
}
}  // namespace detail

// "auto, thread or poll": for error messages.
template <NamedChoice E>
std::string choice_list() {
  return detail::join_choices<E>([](const Choice<E>& c) { return std::string(c.name); });
}

// "auto (thread when every rank has a spare core), thread (...) or poll (...)": for --help.
template <NamedChoice E>
std::string choice_help() {
  return detail::join_choices<E>([](const Choice<E>& c) {
    return std::string(c.name) + (c.help.empty() ? "" : " (" + std::string(c.help) + ")");
  });
}

// The value named text; throws ConfigError(field, "'TEXT': unknown (choose a, b or c)").
// Names are exact (no case folding), as everywhere in meshtrain's input.
template <NamedChoice E>
E parse_choice(const std::string& field, std::string_view text) {
  for (const auto& c : choices<E>()) {
    if (c.name == text) return c.value;
  }
  // Appended rather than "'" + std::string(text): GCC 12 warns falsely (-Wrestrict, its bug
  // 105329) about operator+(const char*, string&&) when this is inlined, which -Werror stops.
  std::string detail = "'";
  detail.append(text).append("': unknown (choose ").append(choice_list<E>()).append(")");
  throw ConfigError(field, detail);
}

// Throws ConfigError(field, "N: unknown (choose a, b or c)") for a value outside E's table,
// which only an integer cast to E can be: for the validation of configs built in code.
template <NamedChoice E>
void check_choice(const std::string& field, E value) {
  for (const auto& c : choices<E>()) {
    if (c.value == value) return;
  }
  throw ConfigError(field, std::to_string(static_cast<long long>(value)) + ": unknown (choose " +
                               choice_list<E>() + ")");
}

// The parsers other code has long called, with the fields they are about.
inline Strategy parse_strategy(std::string_view text) {
  return parse_choice<Strategy>("strategy", text);
}
inline CommBackend parse_comm_backend(std::string_view text) {
  return parse_choice<CommBackend>("comm", text);
}
inline Progress parse_progress(std::string_view text) {
  return parse_choice<Progress>("progress", text);
}
// "linear" is an old alias of "identity", accepted here only.
inline Activation parse_activation(std::string_view text) {
  if (text == "linear") return Activation::Identity;
  return parse_choice<Activation>("activation", text);
}

}  // namespace meshtrain
