option(MESHTRAIN_BUILD_TESTS "Build the GoogleTest suites" ON)
option(MESHTRAIN_BUILD_BENCHMARKS "Build the Google Benchmark binaries" ON)
option(MESHTRAIN_WARNINGS_AS_ERRORS "Treat meshtrain's own warnings as errors" OFF)
set(MESHTRAIN_SANITIZE "" CACHE STRING "Sanitizers to build with, e.g. address,undefined")

# Compile options for meshtrain's own targets only (never global CMAKE_CXX_FLAGS).
add_library(meshtrain_warnings INTERFACE)
target_compile_options(meshtrain_warnings INTERFACE -Wall -Wextra -Wpedantic -Wshadow
  $<$<BOOL:${MESHTRAIN_WARNINGS_AS_ERRORS}>:-Werror>)
if(MESHTRAIN_SANITIZE)
  target_compile_options(meshtrain_warnings INTERFACE -fsanitize=${MESHTRAIN_SANITIZE} -fno-omit-frame-pointer)
  target_link_options(meshtrain_warnings INTERFACE -fsanitize=${MESHTRAIN_SANITIZE})
endif()
