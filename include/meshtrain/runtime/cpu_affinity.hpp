#pragma once
// Which CPUs the ranks of a node may run on, to decide whether each rank has a core to spare
// for a communication thread.
#include <mpi.h>

namespace meshtrain {

// CPUs in this process's affinity mask (what mpirun's --bind-to left it), at least 1.
int cpus_in_affinity_mask();

// Collective over comm. True on every rank when every rank can run a second busy thread
// without taking a core from another rank of its node: its own mask holds at least two CPUs
// and its node's ranks together may use at least two CPUs per rank.
bool every_rank_has_spare_core(MPI_Comm comm);
// The same with node, comm's ranks on this node (MPI_Comm_split_type SHARED), already split.
bool every_rank_has_spare_core(MPI_Comm comm, MPI_Comm node);

}  // namespace meshtrain
