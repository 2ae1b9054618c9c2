#pragma once
#include <mpi.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "meshtrain/comm/communicator.hpp"

namespace meshtrain {

// Throws CommError naming the call, the rank in MPI_COMM_WORLD and the MPI error string.
void check_mpi(int code, const char* call);

MPI_Datatype mpi_type(DataType type);

// Collectives over an MPI communicator on host-accessible memory. Owns a duplicate of the
// communicator it is given, with MPI_ERRORS_RETURN so that every failure is reported as a
// CommError instead of aborting deep inside MPI.
//
// allreduce_async of a float or bfloat16 sum of at least kRingMinBytes runs a ring
// (reduce-scatter, then all-gather) over non-blocking point-to-point messages that each test()
// advances; other types, ops and sizes use MPI_Iallreduce. bfloat16 travels as MPI_UINT16_T
// and is reduced by user-defined MPI_Ops (created per communicator) that add or compare in
// float and round each pairwise combine once to bfloat16; the ring likewise rounds once per
// hop. Every rank must start them in the same order, as
// for any collective.
class MpiCommunicator final : public Communicator {
 public:
  explicit MpiCommunicator(MPI_Comm comm);
  ~MpiCommunicator() override;
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string_view backend() const override { return "mpi"; }
  bool callable_from_another_thread() const override;  // MPI_THREAD_SERIALIZED or more
  MPI_Comm comm() const { return comm_; }

  void allreduce(void* buf, std::size_t count, DataType type, ReduceOp op) override;
  std::unique_ptr<Work> allreduce_async(void* buf, std::size_t count, DataType type,
                                        ReduceOp op) override;
  void reduce_scatter(const void* send, void* recv, std::size_t count, DataType type,
                      ReduceOp op) override;
  void all_gather(const void* send, void* recv, std::size_t count, DataType type) override;
  void broadcast(void* buf, std::size_t count, DataType type, int root) override;
  void scatterv(const void* send, std::span<const int> counts, std::span<const int> displs,
                void* recv, int recv_count, DataType type, int root) override;
  void barrier() override;

  using Communicator::allreduce;
  using Communicator::broadcast;

  static constexpr std::size_t kRingMinBytes = 64 * 1024;
  // MpiCommunicator objects alive in this process.
  static int alive();

 private:
  MPI_Op reduction(ReduceOp op, DataType type) const;

  MPI_Comm comm_ = MPI_COMM_NULL;
  MPI_Op bfloat16_ops_[3] = {MPI_OP_NULL, MPI_OP_NULL, MPI_OP_NULL};  // sum, max, min
  int rank_ = 0;
  int size_ = 1;
  std::uint64_t ring_sequence_ = 0;  // tags tell concurrent rings apart
  // Receive buffers of finished rings, kept for the next ones (no allocation in a step once
  // the first step has run).
  std::shared_ptr<std::vector<std::vector<float>>> ring_scratch_ =
      std::make_shared<std::vector<std::vector<float>>>();
  std::shared_ptr<std::vector<std::vector<std::uint16_t>>> ring_scratch_bf16_ =
      std::make_shared<std::vector<std::vector<std::uint16_t>>>();
};

}  // namespace meshtrain
