#pragma once
// Internal to the runtime: how the DistributedManager assembles a run's ProcessGroups.
#include <mpi.h>

#include <memory>

#include "meshtrain/runtime/process_groups.hpp"

namespace meshtrain {

// Collective over base. Validates config against base's size (ConfigError, identical on
// every rank, before any communication), resolves the backend, splits base along the axes
// the strategy uses and decorates each group as configured. world is an MPI communicator
// over base (the manager's, so that a process has one); device_id is this rank's device.
std::shared_ptr<ProcessGroups> assemble_process_groups(MPI_Comm base,
                                                       std::shared_ptr<Communicator> world,
                                                       const DistributedConfig& config,
                                                       int device_id);

}  // namespace meshtrain
