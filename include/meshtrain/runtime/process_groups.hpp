#pragma once
// The communicators of one run, assembled once by the DistributedManager from a
// DistributedConfig: the mesh, the world group for control collectives, one group per role
// the strategy needs, each of the configured backend and decorated as configured (watchdog,
// debug comparison, fault injection), and the facts about where this rank runs. Everything
// above the runtime receives them; nothing above builds its own.
#include <cstdint>
#include <memory>
#include <string>

#include "meshtrain/choices.hpp"
#include "meshtrain/comm/communicator.hpp"
#include "meshtrain/mesh/device_mesh.hpp"

namespace meshtrain {

class FlightRecorder;

// Where this rank runs, gathered once when the groups are assembled.
struct Topology {
  int local_rank = 0;  // among the ranks of the job on this node
  int local_size = 1;  // ranks of the job on this node
  int device_id = 0;   // the device this rank owns (0 on host execution)
  int cpus = 1;        // CPUs in this process's affinity mask
  // Every rank of the job has a core to spare beyond the one it computes on (the CPU masks
  // of each node's ranks OR-ed together); the same answer on every rank.
  bool spare_core_per_rank = false;
};

class ProcessGroups {
 public:
  struct Parts;  // built by the runtime (src/runtime/process_groups.cpp)
  explicit ProcessGroups(std::unique_ptr<Parts> parts);
  ~ProcessGroups();
  ProcessGroups(const ProcessGroups&) = delete;
  ProcessGroups& operator=(const ProcessGroups&) = delete;

  const DeviceMesh& mesh() const;
  const DistributedConfig& config() const { return mesh().config(); }  // resolved
  const Topology& topology() const;
  // The backend of the training groups, resolved: Mpi or Nccl (world is always MPI, on host
  // memory).
  CommBackend backend() const;

  // Control collectives: plans, flags, broadcasts of host data.
  Communicator& world() const;
  // The training groups. data: the 'data' axis (gradients of a data-parallel step; the
  // batch is split over it). shard: what FSDP shards over ('fsdp', or 'data' on a mesh
  // without one). replica: what FSDP's shards are replicated over ('data' beside 'fsdp';
  // otherwise a group of this rank alone). model: tensor parallelism's 'model' axis.
  // std::logic_error for a group the strategy does not use (see has_*).
  Communicator& data() const;
  Communicator& shard() const;
  Communicator& replica() const;
  Communicator& model() const;
  bool has_data() const;
  bool has_shard() const;
  bool has_model() const;

  // Each global batch is split into batch_parts() shards ('data', and under fsdp 'fsdp'
  // too); this rank computes shard batch_index(). Ranks that differ only in another axis hold
  // replicas and compute the same shard.
  int batch_parts() const;
  int batch_index() const;

  // Called by the trainer as each optimizer step begins (fault injection drills, the flight
  // recorder's step, a pending SIGUSR2 dump).
  void begin_step(std::int64_t step);

  // The run's flight recorder (every group's collectives), or nullptr when
  // flight_records = 0.
  FlightRecorder* flight() const;

  // ProcessGroups objects alive in this process (a run builds exactly one).
  static int alive();

 private:
  std::unique_ptr<Parts> parts_;
};

// Collective: the groups that the DistributedManager alive in this process assembles for
// config (DistributedManager::process_groups), for code that must not see MPI.
// std::logic_error when no manager is alive.
std::shared_ptr<ProcessGroups> current_process_groups(const DistributedConfig& config);

}  // namespace meshtrain
