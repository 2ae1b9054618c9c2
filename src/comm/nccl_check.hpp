#pragma once
// Internal to the NCCL backend (and its tests): error checks and type mappings that need
// the CUDA runtime and NCCL headers.
#include <cuda_runtime.h>
#include <nccl.h>

#include "meshtrain/comm/communicator.hpp"

namespace meshtrain::impl {

// Throw CommError naming the call, the rank, the code and the library's own error text.
void check_cuda(cudaError_t code, const char* call, int rank);
void check_nccl(ncclResult_t code, const char* call, int rank);

// The enumerator's name, e.g. "ncclRemoteError".
const char* nccl_result_name(ncclResult_t code);

ncclDataType_t nccl_data_type(DataType type);
ncclRedOp_t nccl_reduce_op(ReduceOp op);

}  // namespace meshtrain::impl
