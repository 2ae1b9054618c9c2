#pragma once
#include <mpi.h>

#include <memory>
#include <string>

#include "meshtrain/mesh/device_mesh.hpp"
#include "meshtrain/runtime/shard_plan.hpp"

namespace meshtrain {

// Owns the process-wide runtime of one rank: MPI (initialised here unless the caller already
// did, in which case it is adopted and left alone), Kokkos (initialised with this rank's
// device), the rank-to-device binding and the device mesh with its communicators.
class DistributedManager {
 public:
  // Initialises MPI and Kokkos as needed. argc/argv may be null.
  DistributedManager(int* argc, char*** argv, MPI_Comm base = MPI_COMM_WORLD);
  // Also builds the mesh (see create_mesh).
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

  // Collective: validates config against the job (ConfigError) and builds the mesh.
  const DeviceMesh& create_mesh(const DistributedConfig& config);
  bool has_mesh() const { return mesh_ != nullptr; }
  const DeviceMesh& mesh() const;  // throws std::logic_error before create_mesh

  // Collective over the mesh's data axis; see meshtrain::shard_batch.
  ShardPlan shard_batch(int global_batch) const;

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
  std::string binding_error_;  // reported by create_mesh, after MPI is up on every rank
  std::unique_ptr<DeviceMesh> mesh_;
  DistributedManager* previous_ = nullptr;
};

// Local rank arithmetic: which device of a node a rank binds to, given how many the node
// has. Throws ConfigError when the node runs more ranks than it has devices.
int device_for_local_rank(int local_rank, int local_size, int devices_on_node);

}  // namespace meshtrain
