#include "meshtrain/runtime/process_groups.hpp"

#include <Kokkos_Core.hpp>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <optional>
#include <stdexcept>
#include <string>

#include "comm/fault_injection.hpp"
#include "comm/staging_communicator.hpp"
#include "meshtrain/comm/backend.hpp"
#include "meshtrain/comm/checked_communicator.hpp"
#include "meshtrain/comm/flight_recorder.hpp"
#include "meshtrain/comm/mpi_communicator.hpp"
#include "meshtrain/error.hpp"
#include "meshtrain/runtime/cpu_affinity.hpp"
#include "runtime/assemble.hpp"

namespace meshtrain {

namespace {
std::atomic<int> g_alive{0};
}

struct ProcessGroups::Parts {
  std::unique_ptr<DeviceMesh> mesh;
  Topology topology;
  CommBackend backend = CommBackend::Mpi;
  std::shared_ptr<Communicator> world;
  std::shared_ptr<Communicator> data, shard, replica, model;
  int batch_parts = 1;
  int batch_index = 0;
  std::shared_ptr<FaultTrigger> fault;  // null unless MESHTRAIN_FAULT_INJECT is set
  std::shared_ptr<FlightRecorder> flight;  // null when flight_records = 0
};

ProcessGroups::ProcessGroups(std::unique_ptr<Parts> parts) : parts_(std::move(parts)) {
  ++g_alive;
}
ProcessGroups::~ProcessGroups() { --g_alive; }
int ProcessGroups::alive() { return g_alive.load(); }

const DeviceMesh& ProcessGroups::mesh() const { return *parts_->mesh; }
const Topology& ProcessGroups::topology() const { return parts_->topology; }
CommBackend ProcessGroups::backend() const { return parts_->backend; }
Communicator& ProcessGroups::world() const { return *parts_->world; }

namespace {
Communicator& role(const std::shared_ptr<Communicator>& group, const char* name) {
  if (!group) {
    throw std::logic_error(std::string("ProcessGroups::") + name +
                           "(): the run's strategy and mesh use no such group");
  }
  return *group;
}
}  // namespace

Communicator& ProcessGroups::data() const { return role(parts_->data, "data"); }
Communicator& ProcessGroups::shard() const { return role(parts_->shard, "shard"); }
Communicator& ProcessGroups::replica() const { return role(parts_->replica, "replica"); }
Communicator& ProcessGroups::model() const { return role(parts_->model, "model"); }
bool ProcessGroups::has_data() const { return parts_->data != nullptr; }
bool ProcessGroups::has_shard() const { return parts_->shard != nullptr; }
bool ProcessGroups::has_model() const { return parts_->model != nullptr; }
int ProcessGroups::batch_parts() const { return parts_->batch_parts; }
int ProcessGroups::batch_index() const { return parts_->batch_index; }

void ProcessGroups::begin_step(std::int64_t step) {
  if (parts_->fault) parts_->fault->begin_step(step);
  if (parts_->flight) {
    parts_->flight->set_step(step);
    FlightRecorder::poll_signal();
  }
}

FlightRecorder* ProcessGroups::flight() const { return parts_->flight.get(); }

namespace {

struct MpiDeviceBuffers {
  std::shared_ptr<DeviceMemory> memory;
  DeviceBufferPath path = DeviceBufferPath::Stage;
};

// Builds the groups of one assembly, each decorated the same way.
class Assembler {
 public:
  // device: how MPI communicators treat device buffers; none in host-memory builds.
  Assembler(MPI_Comm base, CommBackend backend, CollectiveChecks checks,
            std::shared_ptr<FaultTrigger> fault, MpiDeviceBuffers device,
            std::shared_ptr<FlightRecorder> flight)
      : base_(base),
        backend_(backend),
        checks_(checks),
        fault_(std::move(fault)),
        device_(std::move(device)),
        flight_(std::move(flight)) {}

  // Collective over base: the ranks that share every coordinate but `axis`'s.
  std::shared_ptr<Communicator> axis(const DeviceMesh& mesh, const std::string& name) {
    MPI_Comm split = MPI_COMM_NULL;
    check_mpi(MPI_Comm_split(base_, mesh.axis_group(name), mesh.axis_coord(name), &split),
              "MPI_Comm_split");
    auto group = decorate(training_group(split), split, name, true, mesh.axis_group(name));
    MPI_Comm_free(&split);  // every communicator above holds a duplicate
    return group;
  }
  // This rank alone, in the training backend (a replica group when nothing is replicated).
  std::shared_ptr<Communicator> self() {
    int rank = 0;
    MPI_Comm_rank(base_, &rank);
    return decorate(training_group(MPI_COMM_SELF), MPI_COMM_SELF, "self", true, rank);
  }
  // An MPI communicator, given device buffers only where it may take them.
  std::shared_ptr<Communicator> staged(std::shared_ptr<Communicator> mpi) const {
    if (!device_.memory) return mpi;
    return std::make_shared<StagingCommunicator>(std::move(mpi), device_.memory, device_.path);
  }
  std::shared_ptr<Communicator> training_group(MPI_Comm comm) const {
    std::shared_ptr<Communicator> group = make_communicator(backend_, comm);
    return backend_ == CommBackend::Mpi ? staged(std::move(group)) : group;
  }
  std::shared_ptr<Communicator> decorate(std::shared_ptr<Communicator> group, MPI_Comm comm,
                                         const std::string& name, bool training, int color) {
    if (checks_.timeout.count() > 0 || checks_.debug) {
      group = std::make_shared<CheckedCommunicator>(std::move(group), comm, name, checks_);
    }
    // Inside the fault injector: a rank that a drill stops or kills before a collective has
    // not entered it, and a drill's extra collective is recorded as what the rank called.
    if (flight_) {
      const int index = flight_->add_group(name, color, group->size(), group->rank());
      group = std::make_shared<FlightRecordingCommunicator>(std::move(group), flight_, index);
    }
    if (training && fault_) {
      group = std::make_shared<FaultInjectingCommunicator>(std::move(group), fault_);
    }
    return group;
  }

 private:
  MPI_Comm base_;
  CommBackend backend_;
  CollectiveChecks checks_;
  std::shared_ptr<FaultTrigger> fault_;
  MpiDeviceBuffers device_;
  std::shared_ptr<FlightRecorder> flight_;
};

CommBackend training_backend(const DistributedConfig& config) {
  const CommBackend backend = resolve_comm_backend(config.comm, visible_gpu_count(), nccl_built());
  using MemSpace = Kokkos::DefaultExecutionSpace::memory_space;
  if (backend == CommBackend::Nccl &&
      Kokkos::SpaceAccessibility<Kokkos::HostSpace, MemSpace>::accessible) {
    throw ConfigError("comm", "'nccl': this build's Kokkos (" +
                                  std::string(Kokkos::DefaultExecutionSpace::name()) +
                                  ") keeps tensors in host memory; NCCL needs a CUDA-enabled "
                                  "Kokkos (configure with -DKokkos_ROOT=<its prefix>)");
  }
  return backend;
}

// How MPI communicators treat device buffers: the memory is null in host-memory builds.
// MESHTRAIN_MPI_DEVICE_BUFFERS is checked in every build, so that a bad value is refused
// wherever it is set.
MpiDeviceBuffers mpi_device_buffers() {
  const DeviceBufferPath path = device_buffer_path_from_environment(mpi_cuda_awareness());
  using MemSpace = Kokkos::DefaultExecutionSpace::memory_space;
  if (Kokkos::SpaceAccessibility<Kokkos::HostSpace, MemSpace>::accessible) return {};
  return {cuda_device_memory(), path};
}

Topology probe_topology(MPI_Comm base, int device_id) {
  Topology topology;
  MPI_Comm node = MPI_COMM_NULL;
  check_mpi(MPI_Comm_split_type(base, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node),
            "MPI_Comm_split_type");
  MPI_Comm_rank(node, &topology.local_rank);
  MPI_Comm_size(node, &topology.local_size);
  topology.device_id = device_id;
  topology.cpus = cpus_in_affinity_mask();
  topology.spare_core_per_rank = every_rank_has_spare_core(base, node);
  MPI_Comm_free(&node);
  return topology;
}

}  // namespace

std::shared_ptr<ProcessGroups> assemble_process_groups(MPI_Comm base,
                                                       std::shared_ptr<Communicator> world,
                                                       const DistributedConfig& config,
                                                       int device_id) {
  int size = 1, rank = 0;
  check_mpi(MPI_Comm_size(base, &size), "MPI_Comm_size");
  check_mpi(MPI_Comm_rank(base, &rank), "MPI_Comm_rank");
  // Everything that can be wrong with the configuration is found before any communication.
  auto parts = std::make_unique<ProcessGroups::Parts>();
  parts->mesh = std::make_unique<DeviceMesh>(config, size, rank);
  const DeviceMesh& mesh = *parts->mesh;
  const DistributedConfig& dist = mesh.config();
  const bool fsdp = dist.strategy == Strategy::Fsdp;
  const bool tensor_parallel = mesh.has_axis("model");
  if (tensor_parallel && fsdp) {
    throw ConfigError("mesh_axis_names", format_axis_names(dist.mesh_axis_names) +
                                             ": strategy 'fsdp' with a 'model' axis is not "
                                             "supported; use strategy data for tensor "
                                             "parallelism over 'model'");
  }
  const CommBackend backend = training_backend(dist);
  CollectiveChecks defaults;
  defaults.timeout = std::chrono::milliseconds(
      static_cast<std::int64_t>(dist.collective_timeout_seconds * 1000.0));
  defaults.debug = dist.debug_collectives;
  const CollectiveChecks checks = CollectiveChecks::from_environment(defaults);
  if (const std::optional<FaultPlan> plan = FaultPlan::from_environment()) {
    parts->fault = std::make_shared<FaultTrigger>(*plan, rank);
  }

  parts->backend = backend;
  parts->topology = probe_topology(base, device_id);
  int flight_records = dist.flight_records;
  if (const char* env = std::getenv("MESHTRAIN_FLIGHT_RECORDS")) {
    char* end = nullptr;
    const long value = std::strtol(env, &end, 10);
    if (end == env || *end != '\0' || value < 0 || value > (1 << 24)) {
      throw ConfigError(std::string("MESHTRAIN_FLIGHT_RECORDS '") + env +
                        "': expected a number of records between 0 (off) and 16777216");
    }
    flight_records = static_cast<int>(value);
  }
  if (flight_records > 0) {
    parts->flight = std::make_shared<FlightRecorder>(static_cast<std::size_t>(flight_records),
                                                     rank, size);
  }
  Assembler assemble(base, backend, checks, parts->fault, mpi_device_buffers(), parts->flight);
  parts->world = assemble.decorate(assemble.staged(std::move(world)), base, "world", false, 0);
  if (tensor_parallel) {
    parts->model = assemble.axis(mesh, "model");
    parts->data = assemble.axis(mesh, "data");
  } else if (!fsdp) {
    parts->data = assemble.axis(mesh, "data");
  } else if (mesh.has_axis("fsdp")) {
    parts->shard = assemble.axis(mesh, "fsdp");  // hybrid: shard over fsdp, replicate over data
    parts->replica = mesh.has_axis("data") ? assemble.axis(mesh, "data") : assemble.self();
  } else {
    parts->shard = assemble.axis(mesh, "data");  // a 1-D mesh shards over its data axis
    parts->replica = assemble.self();
  }

  const auto size_of_axis = [&](const char* name) {
    return mesh.has_axis(name) ? mesh.axis_size(name) : 1;
  };
  const auto coord_of_axis = [&](const char* name) {
    return mesh.has_axis(name) ? mesh.axis_coord(name) : 0;
  };
  const int fsdp_size = fsdp ? size_of_axis("fsdp") : 1;
  const int fsdp_coord = fsdp ? coord_of_axis("fsdp") : 0;
  parts->batch_parts = size_of_axis("data") * fsdp_size;
  parts->batch_index = coord_of_axis("data") * fsdp_size + fsdp_coord;
  return std::make_shared<ProcessGroups>(std::move(parts));
}

}  // namespace meshtrain
