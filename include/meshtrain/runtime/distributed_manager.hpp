#pragma once
#include <mpi.h>

#include <memory>
#include <string>

#include "meshtrain/comm/communicator.hpp"
#include "meshtrain/runtime/process_groups.hpp"
#include "meshtrain/runtime/shard_plan.hpp"

namespace meshtrain {

// Owns the process-wide runtime of one rank: MPI (initialised here unless the caller already
// did, in which case it is adopted and left alone), Kokkos (initialised with this rank's
// device), the rank-to-device binding, the job's world communicator, and the one place that
// assembles a run's mesh and process groups.
class DistributedManager {
 public:
  // Initialises MPI and Kokkos as needed. argc/argv may be null.
  DistributedManager(int* argc, char*** argv, MPI_Comm base = MPI_COMM_WORLD);
  // Also assembles the process groups of config (see process_groups).
  DistributedManager(int* argc, char*** argv, const DistributedConfig& config,
                     MPI_Comm base = MPI_COMM_WORLD);
  ~DistributedManager();  // finalises Kokkos, then MPI, where this manager initialised them
  DistributedManager(const DistributedManager&) = delete;
  DistributedManager& operator=(const DistributedManager&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  int local_rank() const { return local_rank_; }  // rank among the ranks on this node
  int local_size() const { return local_size_; }
  int device_id() const { return device_id_; }
  MPI_Comm base_comm() const { return base_; }
  std::string backend_name() const;  // Kokkos's default execution space, e.g. "Serial"
  // The job's communicator (MPI, host memory), for what a program does before and around a
  // run: reading its configuration, broadcasting data, checkpoints.
  Communicator& world() const { return *world_; }

  // Collective: the run's mesh and process groups for config (ConfigError, on every rank
  // alike, when it does not fit the job). Assembled once: asking again for the same
  // (resolved) config returns the same groups; another config assembles new ones, which
  // become the current ones.
  std::shared_ptr<ProcessGroups> process_groups(const DistributedConfig& config);
  // The same over another communicator (e.g. MPI_COMM_SELF, for a 1-rank reference run
  // inside a multi-rank job); not cached.
  std::shared_ptr<ProcessGroups> process_groups(const DistributedConfig& config, MPI_Comm base);

  // Collective: process_groups(config)'s mesh.
  const DeviceMesh& create_mesh(const DistributedConfig& config);
  bool has_mesh() const { return groups_ != nullptr; }
  const DeviceMesh& mesh() const;  // the current groups' mesh; std::logic_error before any
  // Collective: the plan that splits a global batch over the current groups' batch shards
  // (the 'data' axis; with strategy fsdp also 'fsdp'), computed by rank 0 and broadcast.
  ShardPlan shard_batch(int global_batch) const;

  // Ends every rank of the job at once with `code` (a failure on one rank must never leave
  // the others waiting in a collective).
  [[noreturn]] void abort(int code) const;

  // Whether this process was started by an MPI launcher (mpirun, srun with PMIx), which may
  // give it a pseudo-terminal however the launcher's own output is redirected.
  static bool started_by_launcher();

  // The manager most recently constructed and still alive in this process.
  static DistributedManager& current();

 private:
  void initialize(int* argc, char*** argv);
  void shutdown();

  MPI_Comm base_;
  bool owns_mpi_ = false;
  bool owns_kokkos_ = false;
  int rank_ = 0;
  int size_ = 1;
  int local_rank_ = 0;
  int local_size_ = 1;
  int device_id_ = 0;
  std::string binding_error_;  // reported by process_groups, after MPI is up on every rank
  std::shared_ptr<Communicator> world_;
  std::shared_ptr<ProcessGroups> groups_;
  DistributedManager* previous_ = nullptr;
};

// Local rank arithmetic: which device of a node a rank binds to, given how many the node
// has. Throws ConfigError when the node runs more ranks than it has devices.
int device_for_local_rank(int local_rank, int local_size, int devices_on_node);

}  // namespace meshtrain
