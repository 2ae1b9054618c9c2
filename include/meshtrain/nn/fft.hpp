#pragma once
// Two-dimensional real FFTs over the spatial axes of channel-last grids, behind one small
// interface so that the spectral layers do not depend on the FFT library.
//
// A sample is s1 x s2 x C floats in (i, j, c) order; its spectrum s1 x (s2/2 + 1) x C complex
// numbers in (k1, k2, c) order, each an interleaved (real, imaginary) float pair. The
// spectrum stays channel-last, so that mixing channels at one frequency reads contiguous
// memory.
//
// Normalisation as torch.fft.rfft2 / irfft2 (norm = "backward"): forward unscaled, inverse
// scaled by 1 / (s1 s2), so that inverse(forward(x)) == x.
#include <cstddef>
#include <memory>

namespace meshtrain {

class Fft2d {
 public:
  // Plans both directions for grids of s1 x s2 with `channels` channels. Planning is
  // serialised across threads (FFTW's planner is not thread-safe) and must happen outside
  // the step: layers plan when they are built. Executing is thread-safe.
  Fft2d(std::size_t s1, std::size_t s2, std::size_t channels);

  std::size_t s1() const { return s1_; }
  std::size_t s2() const { return s2_; }
  std::size_t channels() const { return channels_; }
  // Floats per sample on each side: s1 s2 C real values, s1 (s2/2 + 1) C complex values.
  std::size_t real_size() const { return s1_ * s2_ * channels_; }
  std::size_t spectrum_size() const { return 2 * s1_ * (s2_ / 2 + 1) * channels_; }

  // rfft2 of `samples` samples, one after another, from x into spectrum. x is not changed.
  void forward(const float* x, float* spectrum, std::size_t samples) const;
  // irfft2: x from spectrum. Destroys spectrum (FFTW's multi-dimensional complex-to-real
  // transforms overwrite their input). Taken as the Hermitian half of a real signal's
  // spectrum: the imaginary parts that such a spectrum cannot have (after the transform
  // over k1, those of k2 = 0 and, for even s2, k2 = s2/2) are ignored, as torch does.
  void inverse(float* spectrum, float* x, std::size_t samples) const;

 private:
  struct Plans;
  std::size_t s1_;
  std::size_t s2_;
  std::size_t channels_;
  std::shared_ptr<const Plans> plans_;  // shared by copies (layers are cloned)
};

}  // namespace meshtrain
