# CUDA and NCCL: found automatically, each an option that defaults to whether it was found.
# Sets MESHTRAIN_HAS_CUDA and MESHTRAIN_HAS_NCCL (0 or 1) for build_config.hpp and for
# src/CMakeLists.txt, which adds the NCCL communicator and links CUDA::cudart and NCCL::NCCL.
#
# Kokkos is unaffected: Debian's Kokkos has no CUDA backend, so parameters stay in host
# memory; the NCCL communicator works on whatever device buffers it is given.
if(NOT DEFINED CUDAToolkit_ROOT AND NOT DEFINED ENV{CUDAToolkit_ROOT} AND NOT DEFINED ENV{CUDA_PATH}
   AND IS_DIRECTORY /usr/local/cuda)
  set(CUDAToolkit_ROOT /usr/local/cuda)
endif()
find_package(CUDAToolkit QUIET)
find_package(NCCL QUIET)

set(_meshtrain_cuda_default OFF)
if(CUDAToolkit_FOUND)
  set(_meshtrain_cuda_default ON)
endif()
option(MESHTRAIN_ENABLE_CUDA "Build the CUDA parts (GPU detection, device buffers)"
  ${_meshtrain_cuda_default})
set(_meshtrain_nccl_default OFF)
if(MESHTRAIN_ENABLE_CUDA AND NCCL_FOUND)
  set(_meshtrain_nccl_default ON)
endif()
option(MESHTRAIN_ENABLE_NCCL "Build the NCCL communicator (needs MESHTRAIN_ENABLE_CUDA)"
  ${_meshtrain_nccl_default})
unset(_meshtrain_cuda_default)
unset(_meshtrain_nccl_default)

if(MESHTRAIN_ENABLE_CUDA AND NOT CUDAToolkit_FOUND)
  message(FATAL_ERROR "MESHTRAIN_ENABLE_CUDA is ON but the CUDA toolkit was not found: set "
    "CUDAToolkit_ROOT to its prefix (the folder holding bin/nvcc), or configure with "
    "-DMESHTRAIN_ENABLE_CUDA=OFF -DMESHTRAIN_ENABLE_NCCL=OFF")
endif()
if(MESHTRAIN_ENABLE_NCCL AND NOT MESHTRAIN_ENABLE_CUDA)
  message(FATAL_ERROR "MESHTRAIN_ENABLE_NCCL is ON but MESHTRAIN_ENABLE_CUDA is OFF: NCCL "
    "needs CUDA; turn both on, or configure with -DMESHTRAIN_ENABLE_NCCL=OFF")
endif()
if(MESHTRAIN_ENABLE_NCCL AND NOT NCCL_FOUND)
  message(FATAL_ERROR "MESHTRAIN_ENABLE_NCCL is ON but NCCL was not found: set NCCL_ROOT "
    "(or the environment's NCCL_HOME) to the prefix holding include/nccl.h and lib/libnccl.so, "
    "or configure with -DMESHTRAIN_ENABLE_NCCL=OFF")
endif()

# For the installed package config: the toolkit this build found (its bin/ holds nvcc).
set(MESHTRAIN_CUDA_ROOT "")
if(CUDAToolkit_FOUND)
  get_filename_component(MESHTRAIN_CUDA_ROOT "${CUDAToolkit_BIN_DIR}" DIRECTORY)
endif()

set(MESHTRAIN_HAS_CUDA 0)
set(MESHTRAIN_HAS_NCCL 0)
if(MESHTRAIN_ENABLE_CUDA)
  set(MESHTRAIN_HAS_CUDA 1)
endif()
if(MESHTRAIN_ENABLE_NCCL)
  set(MESHTRAIN_HAS_NCCL 1)
  # Installed beside meshtrainConfig.cmake, which re-finds NCCL for consumers.
  include(GNUInstallDirs)
  install(FILES ${CMAKE_CURRENT_LIST_DIR}/FindNCCL.cmake
    DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/meshtrain)
endif()

# For the configuration summary.
set(MESHTRAIN_CUDA_SUMMARY "${MESHTRAIN_ENABLE_CUDA} (CUDA toolkit not found)")
if(CUDAToolkit_FOUND)
  set(MESHTRAIN_CUDA_SUMMARY "${MESHTRAIN_ENABLE_CUDA} (found ${CUDAToolkit_VERSION} in ${CUDAToolkit_BIN_DIR})")
endif()
set(MESHTRAIN_NCCL_SUMMARY "${MESHTRAIN_ENABLE_NCCL} (NCCL not found)")
if(NCCL_FOUND)
  set(MESHTRAIN_NCCL_SUMMARY "${MESHTRAIN_ENABLE_NCCL} (found ${NCCL_VERSION}: ${NCCL_LIBRARY})")
endif()

# Sources compiled by the host compiler in an nvcc_wrapper build (MESHTRAIN_HOST_ONLY_OPTIONS,
# see MeshtrainDependencies.cmake) that include CUDA's headers: nvcc finds the toolkit's
# headers by itself, so CMake drops their directory from the include flags as implicit, and
# the host compiler must be told it.
if(MESHTRAIN_HOST_ONLY_OPTIONS AND CUDAToolkit_FOUND)
  foreach(_meshtrain_dir IN LISTS CUDAToolkit_INCLUDE_DIRS)
    list(APPEND MESHTRAIN_HOST_ONLY_OPTIONS "-isystem${_meshtrain_dir}")
  endforeach()
  unset(_meshtrain_dir)
endif()
