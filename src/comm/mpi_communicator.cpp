#include "meshtrain/comm/mpi_communicator.hpp"

#include <climits>
#include <cstdint>
#include <string>

#include "meshtrain/error.hpp"

namespace meshtrain {

std::size_t size_of(DataType type) {
  switch (type) {
    case DataType::Float32: return 4;
    case DataType::Float64: return 8;
    case DataType::Int32: return 4;
    case DataType::Int64: return 8;
  }
  return 0;
}

std::string_view name_of(DataType type) {
  switch (type) {
    case DataType::Float32: return "float32";
    case DataType::Float64: return "float64";
    case DataType::Int32: return "int32";
    case DataType::Int64: return "int64";
  }
  return "?";
}

std::string_view name_of(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum: return "sum";
    case ReduceOp::Average: return "average";
    case ReduceOp::Max: return "max";
    case ReduceOp::Min: return "min";
  }
  return "?";
}

namespace {

int world_rank() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!initialized || finalized) return -1;
  int rank = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum:
    case ReduceOp::Average: return MPI_SUM;
    case ReduceOp::Max: return MPI_MAX;
    case ReduceOp::Min: return MPI_MIN;
  }
  return MPI_SUM;
}

int checked_count(std::size_t count, const char* call) {
  if (count > static_cast<std::size_t>(INT_MAX)) {
    throw CommError(std::string(call) + ": count " + std::to_string(count) +
                    " exceeds INT_MAX on rank " + std::to_string(world_rank()));
  }
  return static_cast<int>(count);
}

// Divides count elements by n in place (the second half of an average).
void divide(void* buf, std::size_t count, DataType type, int n) {
  switch (type) {
    case DataType::Float32: {
      auto* p = static_cast<float*>(buf);
      const float inv = 1.0f / static_cast<float>(n);
      for (std::size_t i = 0; i < count; ++i) p[i] *= inv;
      break;
    }
    case DataType::Float64: {
      auto* p = static_cast<double*>(buf);
      const double inv = 1.0 / n;
      for (std::size_t i = 0; i < count; ++i) p[i] *= inv;
      break;
    }
    case DataType::Int32: {
      auto* p = static_cast<std::int32_t*>(buf);
      for (std::size_t i = 0; i < count; ++i) p[i] /= n;
      break;
    }
    case DataType::Int64: {
      auto* p = static_cast<std::int64_t*>(buf);
      for (std::size_t i = 0; i < count; ++i) p[i] /= n;
      break;
    }
  }
}

class MpiWork final : public Work {
 public:
  MpiWork(MPI_Request request, void* buf, std::size_t count, DataType type, int divide_by)
      : request_(request), buf_(buf), count_(count), type_(type), divide_by_(divide_by) {}
  ~MpiWork() override {
    // A handle dropped without wait() must not leave MPI writing into freed memory.
    if (request_ != MPI_REQUEST_NULL) MPI_Wait(&request_, MPI_STATUS_IGNORE);
  }
  void wait() override {
    if (request_ == MPI_REQUEST_NULL) return;
    check_mpi(MPI_Wait(&request_, MPI_STATUS_IGNORE), "MPI_Wait(MPI_Iallreduce)");
    finish();
  }
  bool test() override {
    if (request_ == MPI_REQUEST_NULL) return true;
    int done = 0;
    check_mpi(MPI_Test(&request_, &done, MPI_STATUS_IGNORE), "MPI_Test(MPI_Iallreduce)");
    if (done) finish();
    return done != 0;
  }

 private:
  void finish() {
    if (divide_by_ > 1) divide(buf_, count_, type_, divide_by_);
    divide_by_ = 0;
  }
  MPI_Request request_;
  void* buf_;
  std::size_t count_;
  DataType type_;
  int divide_by_;
};

}  // namespace

void check_mpi(int code, const char* call) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING] = {};
  int length = 0;
  MPI_Error_string(code, text, &length);
  throw CommError(std::string(call) + " failed on rank " + std::to_string(world_rank()) +
                  " with code " + std::to_string(code) + ": " + std::string(text, length));
}

MPI_Datatype mpi_type(DataType type) {
  switch (type) {
    case DataType::Float32: return MPI_FLOAT;
    case DataType::Float64: return MPI_DOUBLE;
    case DataType::Int32: return MPI_INT32_T;
    case DataType::Int64: return MPI_INT64_T;
  }
  return MPI_DATATYPE_NULL;
}

MpiCommunicator::MpiCommunicator(MPI_Comm comm) {
  check_mpi(MPI_Comm_dup(comm, &comm_), "MPI_Comm_dup");
  check_mpi(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
  check_mpi(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
  check_mpi(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
}

MpiCommunicator::~MpiCommunicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (comm_ != MPI_COMM_NULL && !finalized) MPI_Comm_free(&comm_);
}

void MpiCommunicator::allreduce(void* buf, std::size_t count, DataType type, ReduceOp op) {
  const int n = checked_count(count, "MPI_Allreduce");
  check_mpi(MPI_Allreduce(MPI_IN_PLACE, buf, n, mpi_type(type), mpi_op(op), comm_),
            "MPI_Allreduce");
  if (op == ReduceOp::Average && size_ > 1) divide(buf, count, type, size_);
}

std::unique_ptr<Work> MpiCommunicator::allreduce_async(void* buf, std::size_t count,
                                                       DataType type, ReduceOp op) {
  const int n = checked_count(count, "MPI_Iallreduce");
  MPI_Request request = MPI_REQUEST_NULL;
  check_mpi(MPI_Iallreduce(MPI_IN_PLACE, buf, n, mpi_type(type), mpi_op(op), comm_, &request),
            "MPI_Iallreduce");
  return std::make_unique<MpiWork>(request, buf, count, type,
                                   op == ReduceOp::Average ? size_ : 0);
}

void MpiCommunicator::reduce_scatter(const void* send, void* recv, std::size_t count,
                                     DataType type, ReduceOp op) {
  const int n = checked_count(count, "MPI_Reduce_scatter_block");
  check_mpi(MPI_Reduce_scatter_block(send, recv, n, mpi_type(type), mpi_op(op), comm_),
            "MPI_Reduce_scatter_block");
  if (op == ReduceOp::Average && size_ > 1) divide(recv, count, type, size_);
}

void MpiCommunicator::all_gather(const void* send, void* recv, std::size_t count, DataType type) {
  const int n = checked_count(count, "MPI_Allgather");
  check_mpi(MPI_Allgather(send, n, mpi_type(type), recv, n, mpi_type(type), comm_),
            "MPI_Allgather");
}

void MpiCommunicator::broadcast(void* buf, std::size_t count, DataType type, int root) {
  const int n = checked_count(count, "MPI_Bcast");
  check_mpi(MPI_Bcast(buf, n, mpi_type(type), root, comm_), "MPI_Bcast");
}

void MpiCommunicator::scatterv(const void* send, std::span<const int> counts,
                               std::span<const int> displs, void* recv, int recv_count,
                               DataType type, int root) {
  check_mpi(MPI_Scatterv(send, counts.data(), displs.data(), mpi_type(type), recv, recv_count,
                         mpi_type(type), root, comm_),
            "MPI_Scatterv");
}

void MpiCommunicator::barrier() { check_mpi(MPI_Barrier(comm_), "MPI_Barrier"); }

}  // namespace meshtrain
