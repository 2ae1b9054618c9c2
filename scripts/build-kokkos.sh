#!/usr/bin/env bash
# Builds and installs Kokkos 4 and Kokkos Kernels (BLAS component only, no ETI) for one backend,
# into a prefix outside the clone that is named by the version and a hash of every option, so
# that a second call with the same options (CI's next run) finds it and only prints it.
#
#   scripts/build-kokkos.sh --backend openmp
#   scripts/build-kokkos.sh --backend cuda --arch HOPPER90
#   scripts/build-kokkos.sh --backend serial --print-prefix   # the prefix if built, else exit 1
#
# Options:
#   --backend cuda|openmp|serial   required
#   --arch ARCH                    Kokkos architecture for cuda (Kokkos_ARCH_<ARCH>, e.g.
#                                  HOPPER90, AMPERE80, ADA89); default HOPPER90
#   --kokkos-archive FILE          default: the kokkos-*.tar.gz in $MESHTRAIN_THIRD_PARTY, else
#                                  ../shared/third_party beside the clone, else
#                                  /work/shared/third_party (where these machines keep them,
#                                  for clones made elsewhere, such as CI's)
#   --kernels-archive FILE         default: the kokkos-kernels-*.tar.gz beside it
#   --cache DIR                    default: $MESHTRAIN_KOKKOS_CACHE, else /var/cache/meshtrain
#                                  when writable, else ${XDG_CACHE_HOME:-~/.cache}/meshtrain
#   --jobs N                       parallel build jobs (default: nproc)
#   --print-prefix                 print the prefix if it is installed (exit 1 if not), build nothing
#
# The last line on stdout is the prefix: use it as Kokkos_ROOT and KokkosKernels_ROOT (one
# prefix holds both), and for cuda <prefix>/bin/nvcc_wrapper as CMAKE_CXX_COMPILER.
# Everything else goes to stderr.
#
# Source changes, applied to the extracted copy (never to the archives):
#   - cuda: nvcc_wrapper's default architecture (sm_70, which CUDA 13 rejects) becomes the
#     requested one, so that CMake's compiler checks pass;
#   - cuda with CUDA >= 13: in core/src/Cuda/Kokkos_Cuda_Instance.hpp, cudaMemPrefetchAsync
#     takes a cudaMemLocation and flags and cudaGraphAddDependencies an edge-data array
#     (nullptr), each under CUDART_VERSION >= 13000, so older toolkits compile as before.
# Kokkos is built with Kokkos_ENABLE_IMPL_VIEW_LEGACY=ON: this snapshot's mdspan-based View
# crashes when a moved-from View temporary is destroyed.
set -euo pipefail
start=$(date +%s)

script_dir="$(cd "$(dirname "$0")" && pwd)"
repo_dir="$(dirname "$script_dir")"
third_party=""
for candidate in "${MESHTRAIN_THIRD_PARTY:-}" "$(cd "$repo_dir/.." && pwd)/shared/third_party" \
                 /work/shared/third_party; do
  if [ -n "$candidate" ] && ls "$candidate"/kokkos-[0-9]*.tar.gz > /dev/null 2>&1; then
    third_party=$candidate
    break
  fi
done
third_party=${third_party:-"$(cd "$repo_dir/.." && pwd)/shared/third_party"}

backend=""
arch=""
kokkos_archive=""
kernels_archive=""
cache="${MESHTRAIN_KOKKOS_CACHE:-}"
jobs="$(nproc)"
print_only=0

die() { echo "build-kokkos: error: $*" >&2; exit 2; }
log() { echo "build-kokkos: $*" >&2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --backend) backend="${2:?--backend needs a value}"; shift 2 ;;
    --arch) arch="${2:?--arch needs a value}"; shift 2 ;;
    --kokkos-archive) kokkos_archive="${2:?--kokkos-archive needs a file}"; shift 2 ;;
    --kernels-archive) kernels_archive="${2:?--kernels-archive needs a file}"; shift 2 ;;
    --cache) cache="${2:?--cache needs a directory}"; shift 2 ;;
    --jobs|-j) jobs="${2:?--jobs needs a number}"; shift 2 ;;
    --print-prefix) print_only=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

case "$backend" in
  cuda) arch="${arch:-HOPPER90}" ;;
  openmp|serial)
    [ -z "$arch" ] || die "--arch $arch: only the cuda backend takes an architecture"
    arch="host" ;;
  "") die "--backend is required: cuda, openmp or serial" ;;
  *) die "--backend $backend: expected cuda, openmp or serial" ;;
esac
[[ "$jobs" =~ ^[1-9][0-9]*$ ]] || die "--jobs $jobs: expected a positive integer"

if [ -z "$kokkos_archive" ]; then
  kokkos_archive="$(ls "$third_party"/kokkos-[0-9]*.tar.gz 2>/dev/null | sort | tail -n 1 || true)"
  [ -n "$kokkos_archive" ] || die "no kokkos-*.tar.gz in $third_party; name one with --kokkos-archive"
fi
if [ -z "$kernels_archive" ]; then
  kernels_archive="$(ls "$(dirname "$kokkos_archive")"/kokkos-kernels-*.tar.gz 2>/dev/null | sort | tail -n 1 || true)"
  [ -n "$kernels_archive" ] || die "no kokkos-kernels-*.tar.gz beside $kokkos_archive; name one with --kernels-archive"
fi
[ -f "$kokkos_archive" ] || die "--kokkos-archive $kokkos_archive: no such file"
[ -f "$kernels_archive" ] || die "--kernels-archive $kernels_archive: no such file"

# Versions from the archive names (kokkos-4.6.99-28848dfa.tar.gz, kokkos-kernels-4.7.00.tar.gz).
kokkos_version="$(basename "$kokkos_archive" .tar.gz)"; kokkos_version="${kokkos_version#kokkos-}"
kernels_version="$(basename "$kernels_archive" .tar.gz)"; kernels_version="${kernels_version#kokkos-kernels-}"

cxx_host="${CXX:-g++}"
cuda_root=""
sm=""
if [ "$backend" = cuda ]; then
  [[ "$arch" =~ ^[A-Z]+([0-9]+)$ ]] || die "--arch $arch: expected a Kokkos architecture such as HOPPER90 or AMPERE80"
  sm="sm_${BASH_REMATCH[1]}"
  nvcc="$(command -v nvcc || true)"
  [ -n "$nvcc" ] || { [ -x /usr/local/cuda/bin/nvcc ] && nvcc=/usr/local/cuda/bin/nvcc; } \
    || die "nvcc not found: put the CUDA toolkit's bin/ on PATH"
  cuda_root="$(dirname "$(dirname "$(readlink -f "$nvcc")")")"
fi

# Every option that changes the result, in one list: it names the prefix through its hash.
kokkos_opts=(
  -DCMAKE_BUILD_TYPE=Release
  -DCMAKE_CXX_STANDARD=20
  -DCMAKE_CXX_EXTENSIONS=OFF
  -DCMAKE_POSITION_INDEPENDENT_CODE=ON
  -DBUILD_SHARED_LIBS=OFF
  -DKokkos_ENABLE_IMPL_VIEW_LEGACY=ON
  -DKokkos_ENABLE_SERIAL=ON
  -DKokkos_ENABLE_TESTS=OFF
  -DKokkos_ENABLE_EXAMPLES=OFF
)
kernels_opts=(
  -DCMAKE_BUILD_TYPE=Release
  -DCMAKE_CXX_STANDARD=20
  -DCMAKE_CXX_EXTENSIONS=OFF
  -DCMAKE_POSITION_INDEPENDENT_CODE=ON
  -DBUILD_SHARED_LIBS=OFF
  -DKokkosKernels_ENABLE_ALL_COMPONENTS=OFF
  -DKokkosKernels_ENABLE_COMPONENT_BLAS=ON
  -DKokkosKernels_ADD_DEFAULT_ETI=OFF
  -DKokkosKernels_INST_DOUBLE=OFF
  -DKokkosKernels_INST_FLOAT=OFF
  -DKokkosKernels_INST_COMPLEX_DOUBLE=OFF
  -DKokkosKernels_INST_COMPLEX_FLOAT=OFF
  -DKokkosKernels_INST_LAYOUTLEFT=OFF
  -DKokkosKernels_INST_LAYOUTRIGHT=OFF
  -DKokkosKernels_INST_OFFSET_INT=OFF
  -DKokkosKernels_INST_OFFSET_SIZE_T=OFF
  -DKokkosKernels_INST_ORDINAL_INT=OFF
  -DKokkosKernels_INST_ORDINAL_INT64_T=OFF
  -DKokkosKernels_ENABLE_TPL_LAPACK=OFF
  -DKokkosKernels_ENABLE_TESTS=OFF
  -DKokkosKernels_ENABLE_EXAMPLES=OFF
)
case "$backend" in
  cuda)
    kokkos_opts+=(-DKokkos_ENABLE_CUDA=ON "-DKokkos_ARCH_${arch}=ON")
    kernels_opts+=(-DKokkosKernels_ENABLE_TPL_CUBLAS=ON -DKokkosKernels_ENABLE_TPL_BLAS=OFF
                   -DKokkosKernels_ENABLE_TPL_CUSPARSE=OFF -DKokkosKernels_ENABLE_TPL_CUSOLVER=OFF)
    ;;
  openmp)
    kokkos_opts+=(-DKokkos_ENABLE_OPENMP=ON)
    kernels_opts+=(-DKokkosKernels_ENABLE_TPL_BLAS=ON "-DBLAS_LIBRARY_NAMES=openblas") ;;
  serial)
    kernels_opts+=(-DKokkosKernels_ENABLE_TPL_BLAS=ON "-DBLAS_LIBRARY_NAMES=openblas") ;;
esac

compiler_id="$("$cxx_host" --version | head -n 1)"
if [ -n "$cuda_root" ]; then
  compiler_id+=" / $("$cuda_root/bin/nvcc" --version | tail -n 1)"
fi
# Version 1 of this recipe (the patches below); bump when the recipe changes.
hash="$( { echo "recipe 1"; echo "$backend $arch"; echo "$compiler_id";
           sha256sum "$kokkos_archive" "$kernels_archive" | cut -d' ' -f1;
           printf '%s\n' "${kokkos_opts[@]}" "${kernels_opts[@]}"; } | sha256sum | cut -c1-10)"

if [ -z "$cache" ]; then
  if mkdir -p /var/cache/meshtrain 2>/dev/null && [ -w /var/cache/meshtrain ]; then
    cache=/var/cache/meshtrain
  else
    cache="${XDG_CACHE_HOME:-$HOME/.cache}/meshtrain"
  fi
fi
prefix_name="kokkos-${kokkos_version}-kk-${kernels_version}-${backend}-${arch,,}-${hash}"

if [ "$print_only" = 1 ]; then
  if [ -f "$cache/$prefix_name/.meshtrain-complete" ]; then
    echo "$cache/$prefix_name"; exit 0
  fi
  log "not built yet: $cache/$prefix_name"; exit 1
fi

cache="$(realpath -m "$cache")"
case "$cache/" in
  "$(realpath "$repo_dir")"/*) die "--cache $cache: is inside the clone; choose a directory outside $repo_dir" ;;
esac
mkdir -p "$cache" || die "cannot create the cache directory $cache"
prefix="$cache/$prefix_name"

# One builder per prefix at a time; a second caller waits, then finds it built.
exec 9>"$prefix.lock"
if ! flock -n 9; then
  log "another build of $prefix is running; waiting for it"
  flock 9
fi

if [ -f "$prefix/.meshtrain-complete" ]; then
  log "cached: $prefix (built $(cat "$prefix/.meshtrain-complete"))"
  log "wall time: $(( $(date +%s) - start )) s"
  echo "$prefix"
  exit 0
fi

rm -rf "$prefix"
work="$(mktemp -d "${TMPDIR:-/tmp}/meshtrain-kokkos.XXXXXX")"
trap 'rm -rf "$work"' EXIT
log "building Kokkos $kokkos_version + Kokkos Kernels $kernels_version ($backend, $arch) into $prefix with $jobs jobs"
tar -xzf "$kokkos_archive" -C "$work"
tar -xzf "$kernels_archive" -C "$work"
kokkos_src="$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'kokkos-*' ! -name 'kokkos-kernels-*')"
kernels_src="$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'kokkos-kernels-*')"
[ -f "$kokkos_src/CMakeLists.txt" ] || die "$kokkos_archive: no kokkos-*/CMakeLists.txt inside"
[ -f "$kernels_src/CMakeLists.txt" ] || die "$kernels_archive: no kokkos-kernels-*/CMakeLists.txt inside"

compiler=("-DCMAKE_CXX_COMPILER=$cxx_host")
if [ "$backend" = cuda ]; then
  # nvcc_wrapper: the default architecture (used whenever no -arch is given, e.g. by CMake's
  # compiler checks) becomes the requested one.
  sed -i "s/^default_arch=\"sm_[0-9]*\"/default_arch=\"$sm\"/" "$kokkos_src/bin/nvcc_wrapper"
  grep -q "^default_arch=\"$sm\"" "$kokkos_src/bin/nvcc_wrapper" \
    || die "could not set nvcc_wrapper's default architecture (the file changed upstream?)"
  # CUDA 13: cudaMemPrefetchAsync(ptr, n, cudaMemLocation, flags, stream) and
  # cudaGraphAddDependencies(graph, from, to, edgeData, n).
  instance="$kokkos_src/core/src/Cuda/Kokkos_Cuda_Instance.hpp"
  if ! grep -q "CUDART_VERSION >= 13000" "$instance"; then
    python3 - "$instance" <<'EOF'
import sys
path = sys.argv[1]
text = open(path).read()
old_graph = "    return cudaGraphAddDependencies(graph, from, to, numDependencies);\n"
new_graph = ("#if CUDART_VERSION >= 13000\n"
             "    return cudaGraphAddDependencies(graph, from, to, nullptr, numDependencies);\n"
             "#else\n" + old_graph + "#endif\n")
old_prefetch = "    return cudaMemPrefetchAsync(devPtr, count, dstDevice, m_stream);\n"
new_prefetch = ("#if CUDART_VERSION >= 13000\n"
                "    cudaMemLocation location{};\n"
                "    location.type = dstDevice == cudaCpuDeviceId ? cudaMemLocationTypeHost\n"
                "                                                 : cudaMemLocationTypeDevice;\n"
                "    location.id = dstDevice == cudaCpuDeviceId ? 0 : dstDevice;\n"
                "    return cudaMemPrefetchAsync(devPtr, count, location, 0, m_stream);\n"
                "#else\n" + old_prefetch + "#endif\n")
for old, new in ((old_graph, new_graph), (old_prefetch, new_prefetch)):
    if text.count(old) != 1:
        sys.exit("build-kokkos: error: %s: expected one '%s' to patch" % (path, old.strip()))
    text = text.replace(old, new)
open(path, "w").write(text)
EOF
  fi
  compiler=("-DCMAKE_CXX_COMPILER=$kokkos_src/bin/nvcc_wrapper")
  export NVCC_WRAPPER_DEFAULT_COMPILER="$cxx_host"
  export CUDA_ROOT="$cuda_root"
  export PATH="$cuda_root/bin:$PATH"
fi

# ccache for the host compiler (a rebuild with other options reuses objects); not in front of
# nvcc_wrapper, whose arguments ccache does not understand.
launcher=()
if [ "$backend" != cuda ] && command -v ccache > /dev/null; then
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
fi

t0=$(date +%s)
cmake -S "$kokkos_src" -B "$work/build-kokkos" "${compiler[@]}" "${launcher[@]}" \
  "-DCMAKE_INSTALL_PREFIX=$prefix" "${kokkos_opts[@]}" > "$work/kokkos-configure.log" 2>&1 \
  || { tail -n 40 "$work/kokkos-configure.log" >&2; die "configuring Kokkos failed"; }
cmake --build "$work/build-kokkos" -j "$jobs" > "$work/kokkos-build.log" 2>&1 \
  || { grep -m 20 -B 2 -A 8 "error" "$work/kokkos-build.log" >&2 || tail -n 40 "$work/kokkos-build.log" >&2; die "building Kokkos failed"; }
cmake --install "$work/build-kokkos" > /dev/null
t1=$(date +%s)
log "Kokkos: $((t1 - t0)) s"

kernels_compiler=("-DCMAKE_CXX_COMPILER=$cxx_host")
if [ "$backend" = cuda ]; then kernels_compiler=("-DCMAKE_CXX_COMPILER=$prefix/bin/nvcc_wrapper"); fi
cmake -S "$kernels_src" -B "$work/build-kernels" "${kernels_compiler[@]}" "${launcher[@]}" \
  "-DCMAKE_INSTALL_PREFIX=$prefix" "-DKokkos_ROOT=$prefix" "${kernels_opts[@]}" \
  > "$work/kernels-configure.log" 2>&1 \
  || { tail -n 40 "$work/kernels-configure.log" >&2; die "configuring Kokkos Kernels failed"; }
cmake --build "$work/build-kernels" -j "$jobs" > "$work/kernels-build.log" 2>&1 \
  || { grep -m 20 -B 2 -A 8 "error" "$work/kernels-build.log" >&2 || tail -n 40 "$work/kernels-build.log" >&2; die "building Kokkos Kernels failed"; }
cmake --install "$work/build-kernels" > /dev/null
t2=$(date +%s)
log "Kokkos Kernels: $((t2 - t1)) s"

{ printf '%s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname) in $((t2 - start)) s"
  printf 'kokkos: %s\nkernels: %s\ncompiler: %s\n' "$kokkos_archive" "$kernels_archive" "$compiler_id"
  printf '%s\n' "${kokkos_opts[@]}" "${kernels_opts[@]}"; } > "$prefix/meshtrain-build-info.txt"
date -u +%Y-%m-%dT%H:%M:%SZ > "$prefix/.meshtrain-complete"
log "wall time: $((t2 - start)) s"
echo "$prefix"
