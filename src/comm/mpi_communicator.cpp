#include "meshtrain/comm/mpi_communicator.hpp"

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "meshtrain/comm/bfloat16.hpp"
#include "meshtrain/error.hpp"

namespace meshtrain {

std::size_t size_of(DataType type) {
  switch (type) {
    case DataType::Float32: return 4;
    case DataType::Float64: return 8;
    case DataType::Int32: return 4;
    case DataType::Int64: return 8;
    case DataType::BFloat16: return 2;
  }
  return 0;
}

std::string_view name_of(DataType type) {
  switch (type) {
    case DataType::Float32: return "float32";
    case DataType::Float64: return "float64";
    case DataType::Int32: return "int32";
    case DataType::Int64: return "int64";
    case DataType::BFloat16: return "bfloat16";
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
    case DataType::BFloat16: {
      auto* p = static_cast<bfloat16_bits*>(buf);
      const float inv = 1.0f / static_cast<float>(n);
      for (std::size_t i = 0; i < count; ++i) p[i] = to_bfloat16(from_bfloat16(p[i]) * inv);
      break;
    }
  }
}

// out[i] = bfloat16(float(in[i]) + float(out[i])). Built for AVX2 as well as the baseline
// x86-64 (chosen at load time) where GCC can: the baseline's SSE2 has no good 32 -> 16-bit
// packing, and this loop runs on every combine of the bf16 all-reduce (measured here: about
// 1.4-2.8x faster with AVX2).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
__attribute__((target_clones("avx2", "default")))
#endif
void add_bfloat16(const bfloat16_bits* __restrict__ in, bfloat16_bits* __restrict__ out,
                  std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) {
    out[i] = to_bfloat16(from_bfloat16(in[i]) + from_bfloat16(out[i]));
  }
}

// The user-defined reductions of bfloat16 (MPI has no such type): each combine of two
// buffers computes in float and rounds once to bfloat16.
void bfloat16_sum(void* in, void* inout, int* len, MPI_Datatype*) {
  add_bfloat16(static_cast<const bfloat16_bits*>(in), static_cast<bfloat16_bits*>(inout),
               static_cast<std::size_t>(*len));
}
void bfloat16_max(void* in, void* inout, int* len, MPI_Datatype*) {
  const auto* a = static_cast<const bfloat16_bits*>(in);
  auto* b = static_cast<bfloat16_bits*>(inout);
  for (int i = 0; i < *len; ++i) {
    if (from_bfloat16(a[i]) > from_bfloat16(b[i])) b[i] = a[i];
  }
}
void bfloat16_min(void* in, void* inout, int* len, MPI_Datatype*) {
  const auto* a = static_cast<const bfloat16_bits*>(in);
  auto* b = static_cast<bfloat16_bits*>(inout);
  for (int i = 0; i < *len; ++i) {
    if (from_bfloat16(a[i]) < from_bfloat16(b[i])) b[i] = a[i];
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

// A ring all-reduce of a float sum (reduce-scatter, then all-gather, p - 1 steps each) over
// non-blocking point-to-point messages, advanced by test() as far as it can go without
// waiting. MPI_Iallreduce (Open MPI's libnbc schedules) cost about three times the CPU of the
// blocking MPI_Allreduce for 1-8 MiB on shared memory here; this costs what the blocking ring
// does, and moves on at every test(). Chunk c is [c * count / p, (c + 1) * count / p).
// Element T: float (summed in float) or bfloat16_bits (summed in float, rounded to bfloat16
// once per hop).
template <class T>
class RingWork final : public Work {
 public:
  using Pool = std::vector<std::vector<T>>;
  RingWork(MPI_Comm comm, int rank, int size, T* buf, std::size_t count, int tag,
           std::shared_ptr<Pool> pool)
      : comm_(comm), rank_(rank), size_(size), buf_(buf), count_(count), tag_(tag),
        pool_(std::move(pool)) {
    // The smallest kept buffer that is big enough, else the biggest one, grown.
    const std::size_t largest = (count_ + static_cast<std::size_t>(size_) - 1) / size_;
    auto preference = [largest](const std::vector<T>& v) {
      return v.size() >= largest ? std::pair{0, v.size()} : std::pair{1, largest - v.size()};
    };
    const auto pick = std::min_element(
        pool_->begin(), pool_->end(),
        [&](const auto& a, const auto& b) { return preference(a) < preference(b); });
    if (pick != pool_->end()) {
      scratch_ = std::move(*pick);
      pool_->erase(pick);
    }
    if (scratch_.size() < largest) scratch_.resize(largest);
    post();
  }
  ~RingWork() override {
    // A handle dropped without wait() still completes the ring: the other ranks' steps need
    // this rank's messages, and MPI must not write into freed memory.
    try {
      wait();
    } catch (const CommError&) {
      MPI_Waitall(2, requests_, MPI_STATUSES_IGNORE);  // a failed ring: at least stop writing
    }
    pool_->push_back(std::move(scratch_));
  }
  void wait() override {
    while (step_ < steps()) {
      check_mpi(MPI_Waitall(2, requests_, MPI_STATUSES_IGNORE), "MPI_Waitall(ring all-reduce)");
      advance();
    }
  }
  bool test() override {
    while (step_ < steps()) {
      int done = 0;
      check_mpi(MPI_Testall(2, requests_, &done, MPI_STATUSES_IGNORE),
                "MPI_Testall(ring all-reduce)");
      if (!done) return false;
      advance();
    }
    return true;
  }

 private:
  int steps() const { return 2 * (size_ - 1); }
  int chunk(int c) const { return ((c % size_) + size_) % size_; }
  std::size_t begin(int c) const {
    return count_ * static_cast<std::size_t>(chunk(c)) / static_cast<std::size_t>(size_);
  }
  std::size_t length(int c) const {
    return count_ * (static_cast<std::size_t>(chunk(c)) + 1) / static_cast<std::size_t>(size_) -
           begin(c);
  }
  // Reduce-scatter step s sends chunk rank - s and receives (and adds) chunk rank - s - 1;
  // afterwards this rank holds the sum of chunk rank + 1, and all-gather step s sends chunk
  // rank + 1 - s and receives chunk rank - s into place.
  void post() {
    const int right = (rank_ + 1) % size_;
    const int left = (rank_ + size_ - 1) % size_;
    const bool scatter = step_ < size_ - 1;
    const int s = scatter ? step_ : step_ - (size_ - 1);
    const int send = scatter ? rank_ - s : rank_ + 1 - s;
    const int recv = scatter ? rank_ - s - 1 : rank_ - s;
    T* into = scatter ? scratch_.data() : buf_ + begin(recv);
    check_mpi(MPI_Irecv(into, static_cast<int>(length(recv)), element_type(), left, tag_, comm_,
                        &requests_[0]),
              "MPI_Irecv(ring all-reduce)");
    check_mpi(MPI_Isend(buf_ + begin(send), static_cast<int>(length(send)), element_type(), right,
                        tag_, comm_, &requests_[1]),
              "MPI_Isend(ring all-reduce)");
  }
  void advance() {
    if (step_ < size_ - 1) {
      const int recv = rank_ - step_ - 1;
      T* __restrict__ out = buf_ + begin(recv);
      const T* __restrict__ in = scratch_.data();
      const std::size_t n = length(recv);
      if constexpr (std::is_same_v<T, float>) {
        for (std::size_t i = 0; i < n; ++i) out[i] += in[i];
      } else {
        add_bfloat16(in, out, n);
      }
    }
    if (++step_ < steps()) post();
  }
  static MPI_Datatype element_type() {
    return std::is_same_v<T, float> ? MPI_FLOAT : MPI_UINT16_T;
  }

  MPI_Comm comm_;
  int rank_;
  int size_;
  T* buf_;
  std::size_t count_;
  int tag_;
  std::shared_ptr<Pool> pool_;
  std::vector<T> scratch_;
  int step_ = 0;
  MPI_Request requests_[2] = {MPI_REQUEST_NULL, MPI_REQUEST_NULL};
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
    case DataType::BFloat16: return MPI_UINT16_T;  // moved as bits, reduced by our own ops
  }
  return MPI_DATATYPE_NULL;
}

namespace {
std::atomic<int> g_alive{0};
}

int MpiCommunicator::alive() { return g_alive.load(); }

MpiCommunicator::MpiCommunicator(MPI_Comm comm) {
  check_mpi(MPI_Comm_dup(comm, &comm_), "MPI_Comm_dup");
  check_mpi(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
  check_mpi(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
  check_mpi(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
  check_mpi(MPI_Op_create(&bfloat16_sum, 1, &bfloat16_ops_[0]), "MPI_Op_create(bfloat16 sum)");
  check_mpi(MPI_Op_create(&bfloat16_max, 1, &bfloat16_ops_[1]), "MPI_Op_create(bfloat16 max)");
  check_mpi(MPI_Op_create(&bfloat16_min, 1, &bfloat16_ops_[2]), "MPI_Op_create(bfloat16 min)");
  ++g_alive;  // last: a constructor that throws has no destructor to count it out
}

bool MpiCommunicator::callable_from_another_thread() const {
  int provided = MPI_THREAD_SINGLE;
  check_mpi(MPI_Query_thread(&provided), "MPI_Query_thread");
  return provided >= MPI_THREAD_SERIALIZED;
}

MpiCommunicator::~MpiCommunicator() {
  --g_alive;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (comm_ != MPI_COMM_NULL && !finalized) MPI_Comm_free(&comm_);
  for (MPI_Op& op : bfloat16_ops_) {
    if (op != MPI_OP_NULL && !finalized) MPI_Op_free(&op);
  }
}

MPI_Op MpiCommunicator::reduction(ReduceOp op, DataType type) const {
  if (type != DataType::BFloat16) return mpi_op(op);
  switch (op) {
    case ReduceOp::Sum:
    case ReduceOp::Average: return bfloat16_ops_[0];
    case ReduceOp::Max: return bfloat16_ops_[1];
    case ReduceOp::Min: return bfloat16_ops_[2];
  }
  return bfloat16_ops_[0];
}

void MpiCommunicator::allreduce(void* buf, std::size_t count, DataType type, ReduceOp op) {
  const int n = checked_count(count, "MPI_Allreduce");
  check_mpi(MPI_Allreduce(MPI_IN_PLACE, buf, n, mpi_type(type), reduction(op, type), comm_),
            "MPI_Allreduce");
  if (op == ReduceOp::Average && size_ > 1) divide(buf, count, type, size_);
}

std::unique_ptr<Work> MpiCommunicator::allreduce_async(void* buf, std::size_t count,
                                                       DataType type, ReduceOp op) {
  const int n = checked_count(count, "MPI_Iallreduce");
  if ((type == DataType::Float32 || type == DataType::BFloat16) && op == ReduceOp::Sum &&
      size_ > 1 && count * size_of(type) >= kRingMinBytes &&
      count >= static_cast<std::size_t>(size_)) {
    const int tag = 1000 + static_cast<int>(ring_sequence_++ % 16384);  // MPI_TAG_UB >= 32767
    if (type == DataType::BFloat16) {
      return std::make_unique<RingWork<bfloat16_bits>>(
          comm_, rank_, size_, static_cast<bfloat16_bits*>(buf), count, tag, ring_scratch_bf16_);
    }
    return std::make_unique<RingWork<float>>(comm_, rank_, size_, static_cast<float*>(buf), count,
                                             tag, ring_scratch_);
  }
  MPI_Request request = MPI_REQUEST_NULL;
  check_mpi(MPI_Iallreduce(MPI_IN_PLACE, buf, n, mpi_type(type), reduction(op, type), comm_,
                           &request),
            "MPI_Iallreduce");
  return std::make_unique<MpiWork>(request, buf, count, type,
                                   op == ReduceOp::Average ? size_ : 0);
}

void MpiCommunicator::reduce_scatter(const void* send, void* recv, std::size_t count,
                                     DataType type, ReduceOp op) {
  const int n = checked_count(count, "MPI_Reduce_scatter_block");
  check_mpi(MPI_Reduce_scatter_block(send, recv, n, mpi_type(type), reduction(op, type), comm_),
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
