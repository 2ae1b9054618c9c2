# MPI, Kokkos and Kokkos Kernels. Debian's Kokkos 3.4 config exports a Kokkos::kokkos target
# whose include directory misses /usr/include/trilinos, so meshtrain wraps whatever was found
# in its own interface target and adds the package's include directories as SYSTEM (its
# headers warn under C++20). A CUDA-enabled Kokkos install found through Kokkos_ROOT works
# the same way.
find_package(MPI REQUIRED COMPONENTS CXX)
find_package(Kokkos REQUIRED)
find_package(KokkosKernels REQUIRED)
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
