// meshtrain/choices.hpp on its own: no Kokkos, no MPI, no meshtrain library, so that option
// parsing and the config structs can use it anywhere. Compiling this file is the test.
#include "meshtrain/choices.hpp"

#if defined(MPI_VERSION) || defined(KOKKOS_VERSION) || defined(KOKKOS_VERSION_MAJOR)
#error "meshtrain/choices.hpp must include neither <mpi.h> nor Kokkos"
#endif

#include <cstdio>

namespace {
using namespace meshtrain;
static_assert(choices<Strategy>().size() == 2);
static_assert(choices<CommBackend>().size() == 3);
static_assert(choices<OptimizerType>().size() == 3);
static_assert(choices<Progress>().size() == 3);
static_assert(choices<NonFinite>().size() == 2);
static_assert(choices<Activation>().size() == 4);
static_assert(choices<Dtype>().size() == 2);
static_assert(NamedChoice<Strategy> && !NamedChoice<int>);
}  // namespace

int main() {
  try {
    parse_choice<Progress>("progress", "sometimes");
  } catch (const ConfigError& e) {
    if (e.field() == "progress" && parse_choice<Progress>("progress", "poll") == Progress::Poll) {
      return 0;
    }
  }
  std::fprintf(stderr, "parse_choice did not behave\n");
  return 1;
}
