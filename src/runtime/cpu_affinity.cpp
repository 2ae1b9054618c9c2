#include "meshtrain/runtime/cpu_affinity.hpp"

#include <sched.h>

#include <algorithm>

#include "meshtrain/comm/mpi_communicator.hpp"

namespace meshtrain {

namespace {
bool own_mask(cpu_set_t& set) {
  CPU_ZERO(&set);
  return sched_getaffinity(0, sizeof(set), &set) == 0;
}
}  // namespace

int cpus_in_affinity_mask() {
  cpu_set_t set;
  if (!own_mask(set)) return 1;
  return std::max(1, CPU_COUNT(&set));
}

bool every_rank_has_spare_core(MPI_Comm comm) {
  MPI_Comm node = MPI_COMM_NULL;
  check_mpi(MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node),
            "MPI_Comm_split_type");
  // A failed collective throws CommError, which ends the job: nothing to free then.
  const bool spare = every_rank_has_spare_core(comm, node);
  MPI_Comm_free(&node);
  return spare;
}

bool every_rank_has_spare_core(MPI_Comm comm, MPI_Comm node) {
  cpu_set_t set;
  const bool known = own_mask(set);
  // The union of the node's masks: ranks bound to disjoint cores add up, unbound ranks that
  // share every core do not.
  int local_size = 1;
  MPI_Comm_size(node, &local_size);
  cpu_set_t node_set = set;
  check_mpi(MPI_Allreduce(MPI_IN_PLACE, &node_set, static_cast<int>(sizeof(node_set)),
                          MPI_UNSIGNED_CHAR, MPI_BOR, node),
            "MPI_Allreduce(affinity masks)");
  int spare = known && CPU_COUNT(&set) >= 2 && CPU_COUNT(&node_set) >= 2 * local_size ? 1 : 0;
  check_mpi(MPI_Allreduce(MPI_IN_PLACE, &spare, 1, MPI_INT, MPI_MIN, comm),
            "MPI_Allreduce(spare cores)");
  return spare == 1;
}

}  // namespace meshtrain
