#include "meshtrain/nn/fft.hpp"

#include <fftw3.h>

#include <mutex>
#include <stdexcept>
#include <string>

#include "meshtrain/error.hpp"
#include "meshtrain/nn/types.hpp"

namespace meshtrain {

namespace {

// FFTW's planner (and fftwf_destroy_plan) share global state: one lock for all of them.
std::mutex& planner_mutex() {
  static std::mutex m;
  return m;
}

constexpr bool kHostMemory = Kokkos::SpaceAccessibility<Kokkos::HostSpace, MemSpace>::accessible;

}  // namespace

// One plan per direction over one sample's C channels (strided by 1, C apart in memory),
// executed sample by sample with FFTW's new-array functions. A plan over all the rows of a
// batch would have to be made again whenever the rows change (the last, partial batch; a
// shard's rows), or per rows count in advance; per sample it serves every batch. FFTW_UNALIGNED
// because the samples start at any float in the caller's buffers.
struct Fft2d::Plans {
  fftwf_plan forward = nullptr;
  fftwf_plan inverse = nullptr;

  ~Plans() {
    const std::lock_guard<std::mutex> lock(planner_mutex());
    if (forward) fftwf_destroy_plan(forward);
    if (inverse) fftwf_destroy_plan(inverse);
  }
};

Fft2d::Fft2d(std::size_t s1, std::size_t s2, std::size_t channels)
    : s1_(s1), s2_(s2), channels_(channels) {
  if (s1 == 0 || s2 == 0 || channels == 0) {
    throw ConfigError("fft: a grid of " + std::to_string(s1) + " x " + std::to_string(s2) +
                      " with " + std::to_string(channels) + " channels is empty");
  }
  if constexpr (!kHostMemory) {
    // The place for cuFFT (cufftPlanMany with the same strides, cufftExecR2C / C2R on the
    // stream of the execution space) when meshtrain is built for CUDA.
    throw std::logic_error("fft: no FFT back end for this memory space (cuFFT not written)");
  }
  const int n[2] = {static_cast<int>(s1), static_cast<int>(s2)};
  const int c = static_cast<int>(channels);
  auto plans = std::make_shared<Plans>();
  const std::lock_guard<std::mutex> lock(planner_mutex());
  // FFTW_ESTIMATE does not touch the arrays; they only tell the planner the kind of memory.
  float* real = fftwf_alloc_real(real_size());
  fftwf_complex* spectrum = fftwf_alloc_complex(spectrum_size() / 2);
  const unsigned flags = FFTW_ESTIMATE | FFTW_UNALIGNED;
  plans->forward = fftwf_plan_many_dft_r2c(2, n, c, real, nullptr, c, 1, spectrum, nullptr, c,
                                           1, flags);
  plans->inverse = fftwf_plan_many_dft_c2r(2, n, c, spectrum, nullptr, c, 1, real, nullptr, c,
                                           1, flags);
  fftwf_free(real);
  fftwf_free(spectrum);
  if (!plans->forward || !plans->inverse) {
    throw std::runtime_error("fft: FFTW could not plan " + std::to_string(s1) + " x " +
                             std::to_string(s2) + " x " + std::to_string(channels));
  }
  plans_ = std::move(plans);
}

void Fft2d::forward(const float* x, float* spectrum, std::size_t samples) const {
  const std::size_t in = real_size();
  const std::size_t out = spectrum_size();
  for (std::size_t b = 0; b < samples; ++b) {
    fftwf_execute_dft_r2c(plans_->forward, const_cast<float*>(x + b * in),
                          reinterpret_cast<fftwf_complex*>(spectrum + b * out));
  }
}

void Fft2d::inverse(float* spectrum, float* x, std::size_t samples) const {
  const std::size_t in = spectrum_size();
  const std::size_t out = real_size();
  for (std::size_t b = 0; b < samples; ++b) {
    fftwf_execute_dft_c2r(plans_->inverse, reinterpret_cast<fftwf_complex*>(spectrum + b * in),
                          x + b * out);
  }
  const float scale = 1.0f / static_cast<float>(s1_ * s2_);
  const std::size_t total = samples * out;
  Kokkos::parallel_for(
      "meshtrain::irfft2_scale", Kokkos::RangePolicy<ExecSpace>(0, total),
      KOKKOS_LAMBDA(std::size_t k) { x[k] *= scale; });
}

}  // namespace meshtrain
