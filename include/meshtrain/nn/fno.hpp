#pragma once
// The two-dimensional Fourier Neural Operator (Li et al. 2020, the FNO2d of the reference's
// fourier_2d.py) as a Model: its parameters in the one flat buffer with TensorSpecs, so that
// data parallelism and FSDP train it unchanged.
#include <cstdint>

#include "meshtrain/nn/fourier.hpp"
#include "meshtrain/nn/model.hpp"

namespace meshtrain {

struct FnoConfig {
  int s1 = 0;  // grid points along each axis
  int s2 = 0;
  int in_channels = 1;
  int out_channels = 1;
  int modes1 = 12;  // Fourier modes kept per corner block: at most s1/2 and s2/2+1
  int modes2 = 12;
  int width = 32;  // channels inside the Fourier layers
  int layers = 4;
  int projection = 128;  // channels of the projection's hidden layer
  std::uint64_t seed = 0;
};

// Throws ConfigError naming the FnoConfig field that is out of range.
void validate(const FnoConfig& config);

// Samples (rows) of s1 s2 in_channels columns, channel-last, map to s1 s2 out_channels.
// Layers: GridCoordinates2d (in -> in + 2 channels), Pointwise lift (in + 2 -> width),
// `layers` FourierLayer2d (width -> width; GELU after each but the last), Pointwise
// (width -> projection, GELU), Pointwise (projection -> out). As the reference, without its
// optional domain padding. Initialised from seed as the reference's modules are (see
// Pointwise and SpectralConv2d).
Model make_fno2d(const FnoConfig& config);

}  // namespace meshtrain
