#!/usr/bin/env bash
# Packs what tests/device/run_bundle.sh needs on a GPU machine that has CUDA, Python and the
# nvidia-nccl wheel but no Open MPI, Kokkos, OpenBLAS or Google Benchmark:
#
#   tests/device/bundle.sh [BUILD_DIR] [--cuda CUDA_BUILD_DIR]
#
# BUILD_DIR (default build-t) is a Serial build (read only: nothing is rebuilt). With --cuda
# (e.g. build-cuda, the Kokkos 4 CUDA build of scripts/test-kokkos4.sh) the GPU build's
# binaries are carried too, for run_bundle.sh's GPU steps, with the CPU run's losses that the
# GPU's must equal (expected/, made here with BUILD_DIR's meshtrain at one rank).
#
# Writes .devbundle/ (ignored through .git/info/exclude):
#   bin/   nccl_tests, bench_step, bench_kernels, distributed_pde, meshtrain, mpi_empty (those
#          BUILD_DIR/bin has) and nccl_sweep, built here from tests/device/nccl_sweep.cpp
#          against /usr/local/cuda (libnccl.so.2 by soname, RUNPATH $ORIGIN/../lib);
#   lib/   the ldd closure of those binaries and of the Open MPI plugins, less glibc,
#          libstdc++, libgcc_s, libcuda and libnccl (the remote side uses the nvidia-nccl
#          wheel's libnccl.so.2). libcudart.so.13 (0.7 MB) is carried;
#   ompi/usr/...  Debian's Open MPI 4.1 runtime in Debian's layout, relocatable with
#          OPAL_PREFIX=.devbundle/ompi/usr and PMIX_PREFIX=.devbundle/ompi/usr/lib/<triplet>/pmix2:
#          orterun (mpirun, mpiexec), orted, ompi_info, the libraries, the MCA plugins (less
#          those that need UCX, libfabric, PSM or verbs: useless on one node, and large), the
#          PMIx library and plugins, and the help files;
#   cuda/bin/  with --cuda: unit_tests, mpi_tests, io_tests, run_config_tests, darcy_tests,
#          checkpoint_state_tests, nccl_tests, meshtrain, distributed_pde, bench_step of the CUDA
#          build (those it has). Kokkos 4 is linked statically; their libraries join lib/,
#          except cuBLAS and cuFFT (50-540 MB each), which the remote CUDA 13 toolkit has, and
#          libcudart.so.13, carried as above;
#   expected/  with --cuda: metrics.jsonl of examples/reference.toml at one rank under the
#          data, fsdp and tensor strategies (<strategy>.jsonl) and the printed output (.log);
#   bundle.tar.xz  all of the above in one file (about a third of the size): carry only this
#          (run tool: carry [".devbundle/bundle.tar.xz"]); run_bundle.sh unpacks it in place.
# Prints the sizes at the end.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=
cuda_build=
while (($#)); do
  case $1 in
    --cuda) cuda_build=${2:?bundle.sh: --cuda needs a build directory}; shift 2 ;;
    --cuda=*) cuda_build=${1#--cuda=}; shift ;;
    -*) echo "bundle.sh: unknown option $1" >&2; exit 2 ;;
    *) [[ -z $build ]] || { echo "bundle.sh: one BUILD_DIR only" >&2; exit 2; }
       build=$1; shift ;;
  esac
done
build=${build:-build-t}
[[ $build = /* ]] || build=$repo/$build
if [[ -n $cuda_build ]]; then
  [[ $cuda_build = /* ]] || cuda_build=$repo/$cuda_build
  [[ -d $cuda_build/bin ]] || { echo "bundle.sh: no $cuda_build/bin" >&2; exit 1; }
  # BUNDLE_CPU_AS_CUDA=1 lets a CPU build stand in, to check run_bundle.sh's logic (GPU_DRY=1).
  [[ ${BUNDLE_CPU_AS_CUDA:-0} == 1 ]] ||
    grep -q 'MESHTRAIN_KOKKOS_BACKEND:[A-Z]*=CUDA' "$cuda_build/CMakeCache.txt" 2>/dev/null ||
    { echo "bundle.sh: $cuda_build is not a CUDA build (MESHTRAIN_KOKKOS_BACKEND=CUDA in its CMakeCache.txt)" >&2; exit 1; }
fi
dest=$repo/.devbundle
cuda=${CUDA_HOME:-/usr/local/cuda}
triplet=x86_64-linux-gnu
sysmpi=/usr/lib/$triplet/openmpi   # Debian's libdir is $sysmpi/lib, plugins in $sysmpi/lib/openmpi3
syspmix=/usr/lib/$triplet/pmix2

[[ -d $build/bin ]] || { echo "bundle.sh: no $build/bin" >&2; exit 1; }
[[ -d $sysmpi/lib/openmpi3 ]] || { echo "bundle.sh: no Debian Open MPI at $sysmpi" >&2; exit 1; }

rm -rf "$dest"
mkdir -p "$dest/bin" "$dest/lib"
ompi=$dest/ompi/usr
olib=$ompi/lib/$triplet
mkdir -p "$ompi/bin" "$olib/openmpi/lib/openmpi3" "$ompi/share" "$olib/pmix2/lib/pmix" "$olib/pmix2/share"

# --- binaries ----------------------------------------------------------------------------------
for b in nccl_tests bench_step bench_kernels distributed_pde meshtrain mpi_empty; do
  if [[ -x $build/bin/$b ]]; then
    cp "$build/bin/$b" "$dest/bin/$b"
  else
    echo "bundle.sh: $build/bin/$b not built, skipped" >&2
  fi
done
if [[ -n $cuda_build ]]; then
  mkdir -p "$dest/cuda/bin"
  for b in unit_tests mpi_tests io_tests run_config_tests darcy_tests checkpoint_state_tests \
    nccl_tests meshtrain distributed_pde bench_step; do
    if [[ -x $cuda_build/bin/$b ]]; then
      cp "$cuda_build/bin/$b" "$dest/cuda/bin/$b"
    else
      echo "bundle.sh: $cuda_build/bin/$b not built, skipped" >&2
    fi
  done
fi
g++ -std=c++17 -O2 -I"$cuda/include" "$repo/tests/device/nccl_sweep.cpp" \
  -L"$cuda/lib64" -L"$cuda/lib" -lnccl -lcudart -Wl,-rpath,'$ORIGIN/../lib' \
  -o "$dest/bin/nccl_sweep"
[[ $(readelf -d "$dest/bin/nccl_sweep") == *'(NEEDED)'*'[libnccl.so.2]'* ]] ||
  { echo "bundle.sh: nccl_sweep does not name libnccl.so.2" >&2; exit 1; }

# Open MPI's programs: orterun is mpirun and mpiexec (Debian reaches it through alternatives).
cp /usr/bin/orterun /usr/bin/orted /usr/bin/ompi_info "$ompi/bin/"
ln -s orterun "$ompi/bin/mpirun"
ln -s orterun "$ompi/bin/mpiexec"

# --- Open MPI plugins, PMIx plugins, help and parameter files -----------------------------------
# Plugins whose closure reaches these are left out: network stacks one node does not use.
skip_re='lib(ucp|uct|ucs|ucm|fabric|psm2|psm_infinipath|infinipath|ibverbs|rdmacm|efa)\.so'
plugins=()
left_out=()
for p in "$sysmpi"/lib/openmpi3/*.so; do
  name=$(basename "$p")
  deps=$(ldd "$p")  # (not piped into grep -q: with pipefail, ldd's SIGPIPE would read as no match)
  # OpenSHMEM's frameworks (atomic, memheap, scoll, spml, sshmem): no OpenSHMEM program here.
  if [[ $deps =~ $skip_re || $name =~ ^mca_(atomic|memheap|scoll|spml|sshmem)_ ]]; then
    left_out+=("${name%.so}")
    continue
  fi
  cp "$p" "$olib/openmpi/lib/openmpi3/"
  plugins+=("$p")
done
echo "bundle.sh: plugins left out (UCX/OFI/PSM/verbs, OpenSHMEM): ${left_out[*]}"
cp -r /usr/share/openmpi "$ompi/share/openmpi"
# Debian's /etc/openmpi/openmpi-mca-params.conf is not relocated (sysconfdir stays /etc/openmpi):
# run_bundle.sh sets the same parameters in the environment.
for p in "$syspmix"/lib/pmix/*.so; do
  cp "$p" "$olib/pmix2/lib/pmix/"
  plugins+=("$p")
done
cp -r "$syspmix/share/pmix" "$olib/pmix2/share/pmix"
# The packaged pmix-mca-params.conf names the plugin directory by absolute path: left out here,
# run_bundle.sh sets PMIX_MCA_mca_base_component_path instead.
grep -v '^mca_base_component_path' "$syspmix/share/pmix-mca-params.conf" \
  >"$olib/pmix2/share/pmix-mca-params.conf" || true

# --- shared libraries: the ldd closure ---------------------------------------------------------
# Not carried: glibc, the compiler runtime (the remote one is newer), the CUDA driver, NCCL.
# The CUDA build's cuBLAS and cuFFT stay remote too: the toolkit there has them, and they are
# far too large to carry (cublasLt alone is 540 MB).
keep_out_re='^(linux-vdso|ld-linux|libc\.so|libm\.so|libmvec|libdl\.so|libpthread\.so|librt\.so|libutil\.so|libresolv\.so|libanl\.so|libnss_|libthread_db|libBrokenLocale|libstdc\+\+\.so|libgcc_s\.so|libcuda\.so|libnccl|libcublas|libcublasLt|libcufft)'
declare -A seen=()
closure() {  # prints "soname path" for each library ldd resolves for $1
  ldd "$1" | awk '$2 == "=>" && $3 ~ /^\// { print $1, $3 } $2 == "=>" && $3 == "not" { print $1, "MISSING" }'
}
missing=0
for f in "$dest"/bin/* "$dest"/cuda/bin/* "$ompi"/bin/orterun "$ompi"/bin/orted "$ompi"/bin/ompi_info "${plugins[@]}"; do
  [[ -L $f ]] && continue
  while read -r soname path; do
    [[ $soname =~ $keep_out_re ]] && continue
    [[ -n ${seen[$soname]:-} ]] && continue
    if [[ $path == MISSING ]]; then
      echo "bundle.sh: $f needs $soname, which ldd does not find here" >&2
      missing=1
      continue
    fi
    seen[$soname]=$path
  done < <(closure "$f")
done
((missing == 0)) || exit 1
for soname in $(printf '%s\n' "${!seen[@]}" | sort); do
  case $soname in
    libmpi*|libopen-pal*|libopen-rte*|libmca_common_*|liboshmem*|libompitrace*)
      cp -L "${seen[$soname]}" "$olib/$soname" ;;
    libpmix.so*) cp -L "${seen[$soname]}" "$olib/pmix2/lib/$soname" ;;
    *) cp -L "${seen[$soname]}" "$dest/lib/$soname" ;;
  esac
done
# As Debian has it: unversioned names in Open MPI's libdir pointing two levels up.
for l in "$olib"/lib*.so.*; do
  base=$(basename "$l")
  ln -sf "../../$base" "$olib/openmpi/lib/${base%%.so.*}.so"
done
mkdir -p "$dest/lib/hwloc"  # HWLOC_PLUGINS_PATH: no hwloc plugins from the remote system

# Strip what is not stripped yet (Debian's libraries already are; the build is Release).
find "$dest/bin" "$dest/lib" "$ompi" ${cuda_build:+"$dest/cuda"} -type f \( -perm -u+x -o -name '*.so*' \) ! -name '*.txt' \
  -exec sh -c 'file -b "$1" | grep -q "not stripped" && strip --strip-unneeded "$1" || true' _ {} \;

# --- check: every carried ELF resolves against the bundle alone (plus what stays remote) -------
libpath=$dest/lib:$olib:$olib/pmix2/lib:$cuda/lib64:$cuda/lib
bad=0
while IFS= read -r f; do
  [[ $(file -b "$f") == ELF* ]] || continue
  # libcuda.so.1 (the driver; the CUDA build's Kokkos links it) exists only where a GPU is.
  deps=$(LD_LIBRARY_PATH=$libpath ldd "$f" 2>&1 | grep -v '^[[:space:]]*libcuda\.so\.1 => not found' || true)
  if [[ $deps == *'not found'* ]]; then
    echo "bundle.sh: unresolved in $f:" >&2
    grep 'not found' <<<"$deps" >&2
    bad=1
  fi
done < <(find "$dest" -type f)
((bad == 0)) || exit 1

# --- the CPU run's losses, which the GPU run's must equal within 1e-5 relative -----------------
# One rank of BUILD_DIR's meshtrain (Serial Kokkos) on examples/reference.toml, per strategy; the
# losses are the same at every rank count and strategy (the e2e tests check it), one rank is the
# plainest. Output directories under a temporary folder.
if [[ -n $cuda_build ]]; then
  [[ -x $build/bin/meshtrain ]] || { echo "bundle.sh: $build/bin/meshtrain is needed for expected/" >&2; exit 1; }
  mkdir -p "$dest/expected"
  work=$(mktemp -d "${TMPDIR:-/tmp}/bundle_expected.XXXXXX")
  for strategy in data fsdp tensor; do
    # Tensor parallelism is the data strategy on a mesh with a 'model' axis.
    extra=(--set "distributed.strategy='$strategy'")
    [[ $strategy == tensor ]] && extra=(--set "distributed.strategy='data'"
      --set 'distributed.mesh_shape=[1, 1]' --set 'distributed.mesh_axis_names=["data", "model"]')
    if ! OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout 120 \
      mpiexec -n 1 --oversubscribe "$build/bin/meshtrain" train --config "$repo/examples/reference.toml" \
      --set distributed.comm=mpi "${extra[@]}" \
      --set "output.dir='$work/$strategy'" --set "checkpoint.dir='$work/$strategy/ck'" \
      >"$dest/expected/$strategy.log" 2>&1; then
      echo "bundle.sh: the CPU reference run ($strategy) failed:" >&2
      tail -5 "$dest/expected/$strategy.log" >&2
      rm -rf "$work"
      exit 1
    fi
    cp "$work/$strategy/metrics.jsonl" "$dest/expected/$strategy.jsonl"
  done
  rm -rf "$work"
  echo "bundle.sh: expected losses (CPU, one rank): $(ls "$dest/expected" | tr '\n' ' ')"
fi

# Provenance for whoever reads the results.
{
  echo "built $(date -u +%FT%TZ) on $(hostname) from $build${cuda_build:+ and $cuda_build (CUDA)}"
  echo "git $(git -C "$repo" rev-parse HEAD 2>/dev/null) $(git -C "$repo" status --porcelain --untracked-files=no 2>/dev/null | wc -l) modified files"
  echo "open mpi $(ompi_info --version 2>/dev/null | head -1)"
  echo "pmix $(dpkg-query -W -f='${Version}' libpmix2 2>/dev/null)"
  echo "glibc here $(ldd --version | head -1)"
} >"$dest/BUNDLE_INFO"
touch "$dest/.complete"

# --- one file to carry ----------------------------------------------------------------------
part=$(mktemp "${TMPDIR:-/tmp}/bundle.tar.xz.XXXXXX")
tar -C "$dest" --exclude=./.complete -cf - . | xz -6 -T0 >"$part"
mv "$part" "$dest/bundle.tar.xz"
chmod 644 "$dest/bundle.tar.xz"

echo "bundle.sh: $(du -sh --exclude=bundle.tar.xz "$dest" | cut -f1) unpacked in $dest"
du -sh "$dest/bin" "$dest/lib" "$dest/ompi" ${cuda_build:+"$dest/cuda"}
echo "bundle.sh: carry .devbundle/bundle.tar.xz: $(du -h "$dest/bundle.tar.xz" | cut -f1) ($(stat -c %s "$dest/bundle.tar.xz") bytes)"
