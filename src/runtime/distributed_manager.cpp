#include "meshtrain/runtime/distributed_manager.hpp"

#include <Kokkos_Core.hpp>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "compat/kokkos_compat.hpp"
#include "meshtrain/comm/backend.hpp"
#include "meshtrain/comm/flight_recorder.hpp"
#include "meshtrain/comm/mpi_communicator.hpp"
#include "meshtrain/error.hpp"
#include "runtime/assemble.hpp"

namespace meshtrain {

namespace {
DistributedManager* g_current = nullptr;
}

int device_for_local_rank(int local_rank, int local_size, int devices_on_node) {
  if (devices_on_node < 1) return 0;  // host execution: every rank owns one core
  // A launcher that binds one GPU per task (srun --gpus-per-task=1, or CUDA_VISIBLE_DEVICES
  // set per rank) leaves each rank exactly one visible device: its own.
  if (devices_on_node == 1 && std::getenv("CUDA_VISIBLE_DEVICES") != nullptr) return 0;
  if (local_size > devices_on_node) {
    throw ConfigError("ranks per node " + std::to_string(local_size) + ": this node has only " +
                      std::to_string(devices_on_node) +
                      " visible device(s); launch at most one rank per device");
  }
  return local_rank;
}

DistributedManager::DistributedManager(int* argc, char*** argv, MPI_Comm base) : base_(base) {
  initialize(argc, argv);
}

DistributedManager::DistributedManager(int* argc, char*** argv, const DistributedConfig& config,
                                       MPI_Comm base)
    : base_(base) {
  initialize(argc, argv);
  try {
    process_groups(config);
  } catch (...) {
    shutdown();  // the destructor does not run when a constructor throws
    throw;
  }
}

void DistributedManager::initialize(int* argc, char*** argv) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    int provided = 0;
    check_mpi(MPI_Init_thread(argc, argv, MPI_THREAD_SERIALIZED, &provided), "MPI_Init_thread");
    owns_mpi_ = true;
  }
  if (base_ == MPI_COMM_WORLD) MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  check_mpi(MPI_Comm_rank(base_, &rank_), "MPI_Comm_rank");
  check_mpi(MPI_Comm_size(base_, &size_), "MPI_Comm_size");

  MPI_Comm node = MPI_COMM_NULL;
  check_mpi(MPI_Comm_split_type(base_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node),
            "MPI_Comm_split_type");
  MPI_Comm_rank(node, &local_rank_);
  MPI_Comm_size(node, &local_size_);
  MPI_Comm_free(&node);

  // One device per rank: device = local rank, where the node has GPUs.
  const int gpus = visible_gpu_count();
  try {
    device_id_ = device_for_local_rank(local_rank_, local_size_, gpus);
    if (gpus > 0) bind_cuda_device(device_id_);
  } catch (const std::exception& e) {
    binding_error_ = e.what();
    device_id_ = 0;
  }
  if (!Kokkos::is_initialized()) {
    compat::initialize_kokkos(device_id_);
    owns_kokkos_ = true;
  }
  world_ = std::make_shared<MpiCommunicator>(base_);
  previous_ = g_current;
  g_current = this;
}

DistributedManager::~DistributedManager() { shutdown(); }

void DistributedManager::shutdown() {
  if (g_current == this) g_current = previous_;
  groups_.reset();
  world_.reset();
  if (owns_kokkos_ && Kokkos::is_initialized()) Kokkos::finalize();
  owns_kokkos_ = false;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (owns_mpi_ && !finalized) MPI_Finalize();
  owns_mpi_ = false;
}

std::string DistributedManager::backend_name() const {
  return Kokkos::DefaultExecutionSpace::name();
}

std::shared_ptr<ProcessGroups> DistributedManager::process_groups(
    const DistributedConfig& config) {
  if (groups_ && groups_->config() == config.resolved(size_)) return groups_;
  groups_ = process_groups(config, base_);
  return groups_;
}

std::shared_ptr<ProcessGroups> DistributedManager::process_groups(const DistributedConfig& config,
                                                                  MPI_Comm base) {
  if (!binding_error_.empty()) throw ConfigError(binding_error_);
  std::shared_ptr<Communicator> world =
      base == base_ ? world_ : std::make_shared<MpiCommunicator>(base);
  return assemble_process_groups(base, std::move(world), config, device_id_);
}

const DeviceMesh& DistributedManager::create_mesh(const DistributedConfig& config) {
  return process_groups(config)->mesh();
}

const DeviceMesh& DistributedManager::mesh() const {
  if (!groups_) throw std::logic_error("DistributedManager::mesh() called before create_mesh()");
  return groups_->mesh();
}

ShardPlan DistributedManager::shard_batch(int global_batch) const {
  if (!groups_) throw std::logic_error("DistributedManager::shard_batch() called before create_mesh()");
  return meshtrain::shard_batch(groups_->world(), global_batch, groups_->batch_parts());
}

void DistributedManager::abort(int code) const {
  FlightRecorder::dump_all(FlightReason::Abort);
  MPI_Abort(base_, code);
  std::abort();  // MPI_Abort does not return; this keeps [[noreturn]] honest
}

std::shared_ptr<ProcessGroups> current_process_groups(const DistributedConfig& config) {
  return DistributedManager::current().process_groups(config);
}

bool DistributedManager::started_by_launcher() {
  return std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr || std::getenv("PMIX_RANK") != nullptr;
}

DistributedManager& DistributedManager::current() {
  if (!g_current) throw std::logic_error("no DistributedManager is alive in this process");
  return *g_current;
}

}  // namespace meshtrain
