#include "meshtrain/nn/fft.hpp"

#include <fftw3.h>
#if defined(MESHTRAIN_HAS_CUFFT)
#include <cufft.h>
#endif

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

struct FftRegion {
  FftRegion() { Kokkos::Profiling::pushRegion("meshtrain::fft"); }
  ~FftRegion() { Kokkos::Profiling::popRegion(); }
  FftRegion(const FftRegion&) = delete;
  FftRegion& operator=(const FftRegion&) = delete;
};

#if defined(MESHTRAIN_HAS_CUFFT)
void check_cufft(cufftResult result, const char* what, std::size_t s1, std::size_t s2,
                 std::size_t channels) {
  if (result == CUFFT_SUCCESS) return;
  throw std::runtime_error("fft: cuFFT " + std::string(what) + " failed (cufftResult " +
                           std::to_string(static_cast<int>(result)) + ") for " +
                           std::to_string(s1) + " x " + std::to_string(s2) + " x " +
                           std::to_string(channels));
}
#endif

}  // namespace

// One plan per direction over one sample's C channels (strided by 1, C apart in memory),
// executed sample by sample with FFTW's new-array functions. A plan over all the rows of a
// batch would have to be made again whenever the rows change (the last, partial batch; a
// shard's rows), or per rows count in advance; per sample it serves every batch. FFTW_UNALIGNED
// because the samples start at any float in the caller's buffers.
//
// On CUDA memory the same with cuFFT: one cufftPlanMany per direction over one sample's C
// channels (stride C, distance 1), executed sample by sample on the execution space's stream,
// so that the transforms are ordered with the kernels around them without a fence.
struct Fft2d::Plans {
  fftwf_plan forward = nullptr;
  fftwf_plan inverse = nullptr;
#if defined(MESHTRAIN_HAS_CUFFT)
  cufftHandle cu_forward = 0;
  cufftHandle cu_inverse = 0;
  bool cufft = false;
#endif

  ~Plans() {
#if defined(MESHTRAIN_HAS_CUFFT)
    if (cufft) {
      cufftDestroy(cu_forward);
      cufftDestroy(cu_inverse);
      return;
    }
#endif
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
  const int n[2] = {static_cast<int>(s1), static_cast<int>(s2)};
  const int c = static_cast<int>(channels);
  auto plans = std::make_shared<Plans>();
  if constexpr (!kHostMemory) {
#if defined(MESHTRAIN_HAS_CUFFT)
    int real_shape[2] = {n[0], n[1]};
    int half_shape[2] = {n[0], n[1] / 2 + 1};
    check_cufft(cufftPlanMany(&plans->cu_forward, 2, real_shape, real_shape, c, 1, half_shape, c,
                              1, CUFFT_R2C, c),
                "forward plan", s1, s2, channels);
    plans->cufft = true;  // destroys both handles from here on (0 is never a valid handle)
    check_cufft(cufftPlanMany(&plans->cu_inverse, 2, real_shape, half_shape, c, 1, real_shape, c,
                              1, CUFFT_C2R, c),
                "inverse plan", s1, s2, channels);
    cudaStream_t stream = ExecSpace().cuda_stream();
    check_cufft(cufftSetStream(plans->cu_forward, stream), "set stream", s1, s2, channels);
    check_cufft(cufftSetStream(plans->cu_inverse, stream), "set stream", s1, s2, channels);
    plans_ = std::move(plans);
    return;
#else
    throw std::logic_error("fft: no FFT back end for this memory space (built without cuFFT)");
#endif
  }
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

// Each transform is a Kokkos Tools region ("meshtrain::fft"), as Kokkos Kernels' gemms are
// ("KokkosBlas::gemm[...]"): bench_fno attributes a step's time to them.
void Fft2d::forward(const float* x, float* spectrum, std::size_t samples) const {
  const FftRegion region;
  const std::size_t in = real_size();
  const std::size_t out = spectrum_size();
#if defined(MESHTRAIN_HAS_CUFFT)
  if (plans_->cufft) {
    for (std::size_t b = 0; b < samples; ++b) {
      check_cufft(cufftExecR2C(plans_->cu_forward, const_cast<cufftReal*>(x + b * in),
                               reinterpret_cast<cufftComplex*>(spectrum + b * out)),
                  "R2C", s1_, s2_, channels_);
    }
    return;
  }
#endif
  for (std::size_t b = 0; b < samples; ++b) {
    fftwf_execute_dft_r2c(plans_->forward, const_cast<float*>(x + b * in),
                          reinterpret_cast<fftwf_complex*>(spectrum + b * out));
  }
}

void Fft2d::inverse(float* spectrum, float* x, std::size_t samples) const {
  const FftRegion region;
  const std::size_t in = spectrum_size();
  const std::size_t out = real_size();
  for (std::size_t b = 0; b < samples; ++b) {
#if defined(MESHTRAIN_HAS_CUFFT)
    if (plans_->cufft) {
      check_cufft(cufftExecC2R(plans_->cu_inverse,
                               reinterpret_cast<cufftComplex*>(spectrum + b * in), x + b * out),
                  "C2R", s1_, s2_, channels_);
      continue;
    }
#endif
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
