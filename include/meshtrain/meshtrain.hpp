#pragma once
// Everything a training program needs.
#include "meshtrain/comm/communicator.hpp"
#include "meshtrain/comm/mpi_communicator.hpp"
#include "meshtrain/data/dataset.hpp"
#include "meshtrain/error.hpp"
#include "meshtrain/mesh/device_mesh.hpp"
#include "meshtrain/mesh/distributed_config.hpp"
#include "meshtrain/nn/mlp.hpp"
#include "meshtrain/optim/optimizer.hpp"
#include "meshtrain/runtime/distributed_manager.hpp"
#include "meshtrain/runtime/shard_plan.hpp"
#include "meshtrain/train/trainer.hpp"
#include "meshtrain/train/training_config.hpp"
