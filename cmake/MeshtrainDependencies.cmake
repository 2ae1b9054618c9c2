# MPI, Kokkos and Kokkos Kernels. Debian's Kokkos 3.4 config exports a Kokkos::kokkos target
# whose include directory misses /usr/include/trilinos, so meshtrain wraps whatever was found
# in its own interface target and adds the package's include directories as SYSTEM (its
# headers warn under C++20). A CUDA-enabled Kokkos install found through Kokkos_ROOT works
# the same way.
#
# Kokkos 4 builds (scripts/build-kokkos.sh, or a cluster's own install) are found through
# Kokkos_ROOT and KokkosKernels_ROOT; one prefix holding both needs only Kokkos_ROOT.
find_package(MPI REQUIRED COMPONENTS CXX)
if(NOT KokkosKernels_ROOT AND NOT DEFINED ENV{KokkosKernels_ROOT} AND Kokkos_ROOT)
  set(KokkosKernels_ROOT "${Kokkos_ROOT}")
endif()
find_package(Kokkos REQUIRED)
find_package(KokkosKernels REQUIRED)

# MESHTRAIN_KOKKOS_BACKEND (the openmp and cuda presets set it): the execution space the found
# Kokkos must have, so that a missing or wrong Kokkos_ROOT is an error instead of a silent
# build against another Kokkos (Debian's is Serial only).
set(MESHTRAIN_KOKKOS_BACKEND "" CACHE STRING
  "Kokkos backend the found Kokkos must provide (SERIAL, OPENMP, CUDA); empty: any")
if(MESHTRAIN_KOKKOS_BACKEND)
  string(TOUPPER "${MESHTRAIN_KOKKOS_BACKEND}" _meshtrain_backend)
  if(Kokkos_VERSION VERSION_LESS 4.0 OR NOT COMMAND kokkos_check)
    message(FATAL_ERROR "MESHTRAIN_KOKKOS_BACKEND=${MESHTRAIN_KOKKOS_BACKEND}: the Kokkos found "
      "(${Kokkos_VERSION} in ${Kokkos_DIR}) is not Kokkos 4; set Kokkos_ROOT and "
      "KokkosKernels_ROOT to a Kokkos 4 install (scripts/build-kokkos.sh prints one)")
  endif()
  kokkos_check(DEVICES ${_meshtrain_backend} RETURN_VALUE _meshtrain_has_backend)
  if(NOT _meshtrain_has_backend)
    message(FATAL_ERROR "MESHTRAIN_KOKKOS_BACKEND=${MESHTRAIN_KOKKOS_BACKEND}: the Kokkos in "
      "${Kokkos_DIR} was built without it (it has: ${Kokkos_DEVICES})")
  endif()
  unset(_meshtrain_backend)
  unset(_meshtrain_has_backend)
endif()

# Translation units that need no Kokkos (toml++ through run_config.cpp) are compiled by the host
# compiler. With Kokkos' nvcc_wrapper as CMAKE_CXX_COMPILER every .cpp goes through nvcc
# unless the wrapper is told --host-only; targets and sources that need no Kokkos take
# MESHTRAIN_HOST_ONLY_OPTIONS. (With Kokkos' compiler launcher and a host CMAKE_CXX_COMPILER
# they get the host compiler by themselves, and the list is empty.)
set(MESHTRAIN_HOST_ONLY_OPTIONS "")
get_filename_component(_meshtrain_cxx_name "${CMAKE_CXX_COMPILER}" NAME)
if(_meshtrain_cxx_name MATCHES "nvcc_wrapper")
  set(MESHTRAIN_HOST_ONLY_OPTIONS --host-only)
endif()
unset(_meshtrain_cxx_name)
find_package(CLI11 QUIET CONFIG)
if(NOT CLI11_FOUND)
  find_path(CLI11_INCLUDE_DIR CLI/CLI.hpp REQUIRED)
  add_library(CLI11::CLI11 INTERFACE IMPORTED)
  target_include_directories(CLI11::CLI11 SYSTEM INTERFACE ${CLI11_INCLUDE_DIR})
endif()

add_library(meshtrain_kokkos INTERFACE)
target_link_libraries(meshtrain_kokkos INTERFACE Kokkos::kokkos)
if(Kokkos_INCLUDE_DIRS)
  target_include_directories(meshtrain_kokkos SYSTEM INTERFACE ${Kokkos_INCLUDE_DIRS})
endif()
if(TARGET Kokkos::kokkoskernels)
  target_link_libraries(meshtrain_kokkos INTERFACE Kokkos::kokkoskernels)
elseif(TARGET trilinos_kokkoskernels)
  target_link_libraries(meshtrain_kokkos INTERFACE trilinos_kokkoskernels)
  if(KokkosKernels_INCLUDE_DIRS)
    target_include_directories(meshtrain_kokkos SYSTEM INTERFACE ${KokkosKernels_INCLUDE_DIRS})
  endif()
else()
  message(FATAL_ERROR "KokkosKernels was found but exports neither Kokkos::kokkoskernels nor trilinos_kokkoskernels")
endif()
if(Kokkos_LIBRARY_DIRS)
  target_link_directories(meshtrain_kokkos INTERFACE ${Kokkos_LIBRARY_DIRS})
endif()

# FFTW in single precision (Debian's libfftw3-dev) for spectral layers and PDE data on host
# memory spaces; it ships pkg-config files, not a CMake package.
find_package(PkgConfig REQUIRED)
pkg_check_modules(FFTW3F REQUIRED IMPORTED_TARGET fftw3f)
