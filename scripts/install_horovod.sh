#!/usr/bin/env bash
# Build (or reuse a cached build of) Horovod 0.28.1 for this repo's TensorFlow and install it.
#
#   scripts/install_horovod.sh                 # into .venv/bin/python, CPU build: TensorFlow + Gloo, no MPI
#   PYTHON=/path/to/venv/bin/python scripts/install_horovod.sh
#   HOROVOD_GPU_OPERATIONS=NCCL scripts/install_horovod.sh   # GPU machines (needs CUDA toolkit + NCCL headers)
#   scripts/install_horovod.sh --wheel-only    # build into (or find in) the wheel cache, install nothing; a later
#                                              # plain run installs that wheel
#
# Horovod is optional and only ships as a source distribution, so it is kept out of the requirements files.
# Idempotent: does nothing if the wanted build is already installed; reuses a cached wheel (keyed by Horovod
# version, TensorFlow version, Python tag and GPU operations) instead of rebuilding (the build takes 1.5-6 min on 2 cores, by load).
# Environment:
#   PYTHON               interpreter to install into (default: <repo>/.venv/bin/python)
#   HOROVOD_WHEEL_CACHE  where built wheels are kept (default: $HOME/.cache/efficientnet_tf2/wheels)
#   HOROVOD_FORCE_BUILD  1 = rebuild even if a cached wheel exists
#   HOROVOD_GPU_OPERATIONS, HOROVOD_CUDA_HOME, HOROVOD_NCCL_HOME, ...  passed through to Horovod's build
set -Eeuo pipefail

HOROVOD_VERSION=0.28.1
# Pins for packages Horovod needs that are not in constraints.txt. wheel 0.45.x still provides bdist_wheel
# for setuptools < 70.1 (the venv's default setuptools); later wheel releases defer to setuptools.
WHEEL_PIN="wheel==0.45.1"
PYYAML_PIN="pyyaml==6.0.3"
APT_PACKAGES=(libhighwayhash-dev libfarmhash-dev)  # headers TensorFlow's C++ headers include but its wheel lacks

die() { echo "install_horovod.sh: ERROR: $*" >&2; exit 1; }
log() { echo "install_horovod.sh: $*"; }
trap 'rc=$?; echo "install_horovod.sh: ERROR: command failed (exit $rc) at line $LINENO: $BASH_COMMAND" >&2; exit $rc' ERR

WHEEL_ONLY=0
for arg in "$@"; do
  case "$arg" in
    --wheel-only) WHEEL_ONLY=1 ;;
    *) die "unknown argument '$arg' (the only option is --wheel-only)" ;;
  esac
done

CALLER_DIR=$(pwd)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Resolve PYTHON to an absolute path *without* following symlinks (a venv's python links to the base one).
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
case "$PYTHON" in
  /*) ;;
  */*) PYTHON="$CALLER_DIR/$PYTHON" ;;
  *) PYTHON=$(command -v "$PYTHON") || die "python '$PYTHON' not found on PATH" ;;
esac
[ -x "$PYTHON" ] || die "python interpreter '$PYTHON' does not exist (create the venv first, see README; or set PYTHON=...)"
BIN_DIR=$(dirname "$PYTHON")
CACHE_DIR=${HOROVOD_WHEEL_CACHE:-$HOME/.cache/efficientnet_tf2/wheels}
CONSTRAINTS=()
[ -f "$ROOT/constraints.txt" ] && CONSTRAINTS=(-c "$ROOT/constraints.txt")

pip() { "$PYTHON" -m pip --disable-pip-version-check "$@"; }

# --- What we are building for -----------------------------------------------------------------------------
# Read from the installed package's metadata, not by importing it: an import of TensorFlow costs seconds of CPU,
# and the checks below (horovod_ok) import it anyway where it matters. The headers are tf.sysconfig.get_include().
tf_info=$("$PYTHON" - <<'EOF' 2>/dev/null
import os, sys
from importlib.metadata import packages_distributions, version
from importlib.util import find_spec
spec = find_spec("tensorflow")
print(version(packages_distributions()["tensorflow"][0]), "cp%d%d" % sys.version_info[:2],
      os.path.join(list(spec.submodule_search_locations)[0], "include"))
EOF
) || tf_info=
if [ -n "$tf_info" ]; then
  read -r TF_VERSION PY_TAG TF_INCLUDE <<<"$tf_info"
else
  die "TensorFlow is not installed in $PYTHON; install the requirements first (see README)"
fi

# PEP 440 local version label identifying the build: 0.28.1+tf2.21.0 (GPU builds: 0.28.1+tf2.21.0.nccl).
# "patch4": this script's source and build patches (below); a changed patch set gets a new label, so an old
# cached wheel is never reused for it.
LOCAL_LABEL="tf$(echo "$TF_VERSION" | tr -c 'A-Za-z0-9\n' '.').patch4"
if [ -n "${HOROVOD_GPU_OPERATIONS:-}" ]; then
  LOCAL_LABEL="$LOCAL_LABEL.$(echo "$HOROVOD_GPU_OPERATIONS" | tr 'A-Z' 'a-z' | tr -c 'a-z0-9\n' '.')"
fi
WANT_VERSION="$HOROVOD_VERSION+$LOCAL_LABEL"
log "target: horovod $WANT_VERSION for TensorFlow $TF_VERSION, $PY_TAG, python $PYTHON"

# Checks that the installed horovod is the wanted build and that its TensorFlow op library loads.
horovod_ok() {
  "$PYTHON" - "$WANT_VERSION" <<'EOF' >/dev/null 2>&1
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
from importlib.metadata import version
assert version("horovod") == sys.argv[1], version("horovod")
import horovod.tensorflow as hvd
assert hvd.gloo_built()
EOF
}

# Installs Horovod's pure-Python runtime dependencies (and, with "build", what building it needs).
python_deps() {
  local want=() check="import cloudpickle, psutil, yaml, packaging"
  [ "${1:-}" = build ] && check="$check, setuptools
try:
    import setuptools.command.bdist_wheel
except ImportError:
    from wheel.bdist_wheel import bdist_wheel"
  if ! "$PYTHON" -c "$check" >/dev/null 2>&1; then
    want=(cloudpickle psutil packaging "$PYYAML_PIN")
    [ "${1:-}" = build ] && want+=(setuptools "$WHEEL_PIN")
    log "installing python packages: ${want[*]}"
    pip install -q "${CONSTRAINTS[@]}" "${want[@]}" || die "pip install ${want[*]} failed"
  fi
}

verify() {
  horovod_ok || die "horovod $WANT_VERSION was installed but does not import with TensorFlow + Gloo; run: $PYTHON -c 'import horovod.tensorflow'"
  # horovod_ok loaded the TensorFlow ops and found Gloo built in, which is what `horovodrun --check-build` reports
  # too, but that imports TensorFlow anew for each check (docs/horovod.md); here only the launcher has to start.
  "$BIN_DIR/horovodrun" --version >/dev/null 2>&1 || die "horovodrun does not start; run: $BIN_DIR/horovodrun --version"
  log "OK: horovod $WANT_VERSION installed in $PYTHON (TensorFlow ops load, Gloo built in, horovodrun starts)"
}

install_wheel() {
  python_deps
  log "installing $1"
  # --no-deps: runtime deps were installed above; do not let pip touch the pinned TensorFlow stack.
  pip install -q --no-deps --force-reinstall "$1" || die "pip install $1 failed"
  verify
}

# --- 1. Already installed? ----------------------------------------------------------------------------------
if [ "$WHEEL_ONLY" != 1 ] && [ "${HOROVOD_FORCE_BUILD:-0}" != 1 ] && horovod_ok; then
  log "horovod $WANT_VERSION is already installed in $PYTHON and imports with Gloo; nothing to do"
  exit 0
fi

# --- 2. Cached wheel? ---------------------------------------------------------------------------------------
WHEEL_GLOB="horovod-${WANT_VERSION}-${PY_TAG}-${PY_TAG}-*.whl"
if [ "${HOROVOD_FORCE_BUILD:-0}" != 1 ]; then
  cached=$(ls -t "$CACHE_DIR"/$WHEEL_GLOB 2>/dev/null | head -n1 || true)
  if [ -n "$cached" ]; then
    log "using cached wheel (no rebuild): $cached"
    [ "$WHEEL_ONLY" = 1 ] || install_wheel "$cached"
    exit 0
  fi
fi
if [ "${HOROVOD_FORCE_BUILD:-0}" = 1 ]; then
  log "HOROVOD_FORCE_BUILD=1: building from source (1.5-6 min on 2 cores, depending on load)"
else
  log "no cached wheel matching $CACHE_DIR/$WHEEL_GLOB; building from source (1.5-6 min on 2 cores, depending on load)"
fi

# --- 3. System build dependencies -----------------------------------------------------------------------------
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
command -v cmake >/dev/null || missing+=(cmake)   # Horovod needs CMake >= 3.13
command -v make >/dev/null || missing+=(make)
command -v g++ >/dev/null || missing+=(g++)
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || die "missing build dependencies (${missing[*]}) and no apt-get to install them"
  SUDO=()
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || die "need root or sudo to apt-get install ${missing[*]}"
    SUDO=(sudo)
  fi
  log "apt-get installing: ${missing[*]}"
  "${SUDO[@]}" apt-get update -qq || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed"
else
  log "system build dependencies present (${APT_PACKAGES[*]}, cmake, make, g++)"
fi
cmake_version=$(cmake --version | sed -n 's/^cmake version \([0-9.]*\).*/\1/p')
"$PYTHON" -c "import sys; v=tuple(map(int,'$cmake_version'.split('.')[:2])); sys.exit(v < (3, 13))" \
  || die "cmake $cmake_version is too old; Horovod needs >= 3.13"

python_deps build

# --- 4. Fetch, patch, build ---------------------------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/horovod-build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
log "downloading horovod==$HOROVOD_VERSION sdist"
pip download -q --no-deps --no-binary :all: --no-build-isolation "horovod==$HOROVOD_VERSION" -d "$WORK" \
  || die "pip download horovod==$HOROVOD_VERSION failed"
tar -xzf "$WORK/horovod-$HOROVOD_VERSION.tar.gz" -C "$WORK" || die "cannot unpack the sdist"
SRC="$WORK/horovod-$HOROVOD_VERSION"

# TensorFlow >= 2.19 moved XLA's client headers; Horovod's main branch made the same change.
PATCH_FILE="$SRC/horovod/tensorflow/xla_mpi_ops.cc"
OLD_INCLUDE='#include "tensorflow/compiler/xla/client/xla_builder.h"'
NEW_INCLUDE='#include "xla/hlo/builder/xla_builder.h"'
if [ -f "$TF_INCLUDE/xla/hlo/builder/xla_builder.h" ]; then
  grep -qF "$OLD_INCLUDE" "$PATCH_FILE" \
    || die "patch pattern '$OLD_INCLUDE' not found in $PATCH_FILE (Horovod version changed? update this script)"
  sed -i 's|^#include "tensorflow/compiler/xla/client/xla_builder.h"|#include "xla/hlo/builder/xla_builder.h"|' "$PATCH_FILE"
  grep -qF "$NEW_INCLUDE" "$PATCH_FILE" || die "sed did not apply the include fix to $PATCH_FILE"
  ! grep -qF "$OLD_INCLUDE" "$PATCH_FILE" || die "old include still present in $PATCH_FILE after sed"
  log "patched $OLD_INCLUDE -> $NEW_INCLUDE"
else
  log "TensorFlow $TF_VERSION has no xla/hlo/builder/xla_builder.h; building without the include fix"
fi

# Horovod 0.28.1's Gloo controller reserves its rank table instead of sizing it (global_ranks_.reserve), so the
# stall inspector sees a process set of 0 ranks: with Gloo, a stalled rank never gets the stall warning and
# HOROVOD_STALL_SHUTDOWN_TIME_SECONDS never ends the wait (the MPI controller sizes the same table).
STALL_FILE="$SRC/horovod/common/gloo/gloo_controller.cc"
grep -qF 'global_ranks_.reserve(size_);' "$STALL_FILE" \
  || die "patch pattern 'global_ranks_.reserve(size_);' not found in $STALL_FILE (Horovod version changed? update this script)"
sed -i 's|global_ranks_.reserve(size_);|global_ranks_.resize(size_);|' "$STALL_FILE"
grep -qF 'global_ranks_.resize(size_);' "$STALL_FILE" || die "sed did not apply the rank-table fix to $STALL_FILE"
log "patched global_ranks_.reserve -> resize in horovod/common/gloo/gloo_controller.cc (Gloo stall check)"

# Build time only, the same library (docs/horovod.md). Horovod 0.28.1 compiles two things a TensorFlow build
# without a GPU never uses: xla_mpi_ops.cc holds nothing but GPU code (#if HAVE_GPU), yet parsing XLA's headers
# makes it the costliest compile unit; and Gloo is built twice, while TensorFlow >= 2.10 links only its C++17 copy
# (compatible17_gloo). The CMake files compile the first only with CUDA or ROCm and the plain Gloo only for a target
# that links it. And its release configuration (RelWithDebInfo) adds debug information: a fifth of the compile
# time and 52 of the library's 54 MB. It is left out, as in TensorFlow's own wheels (symbols stay);
# HOROVOD_DEBUG=1 is Horovod's own debug build.
TF_CMAKE="$SRC/horovod/tensorflow/CMakeLists.txt"
XLA_SOURCE='list(APPEND TF_SOURCES "${PROJECT_SOURCE_DIR}/horovod/tensorflow/xla_mpi_ops.cc")'
grep -qxF "$XLA_SOURCE" "$TF_CMAKE" \
  || die "patch pattern '$XLA_SOURCE' not found in $TF_CMAKE (Horovod version changed? update this script)"
sed -i 's|^list(APPEND TF_SOURCES "${PROJECT_SOURCE_DIR}/horovod/tensorflow/xla_mpi_ops.cc")$|if(HAVE_CUDA OR HAVE_ROCM)\n    &\nendif()|' \
  "$TF_CMAKE"
grep -qxF 'if(HAVE_CUDA OR HAVE_ROCM)' "$TF_CMAKE" || die "sed did not make xla_mpi_ops.cc GPU-only in $TF_CMAKE"
grep -qxF 'add_subdirectory(third_party/gloo)' <(sed 's/^ *//' "$SRC/CMakeLists.txt") \
  || die "'add_subdirectory(third_party/gloo)' not found in $SRC/CMakeLists.txt (Horovod version changed? update this script)"
cat >>"$SRC/CMakeLists.txt" <<'CMAKE'

# Added by scripts/install_horovod.sh: the plain gloo only when a target links it (Gloo targets stay, so whatever
# links gloo still gets it built first).
if(TARGET gloo)
    set_target_properties(gloo PROPERTIES EXCLUDE_FROM_ALL TRUE)
endif()
# Horovod's own sources and Gloo's compiled as a few combined units (CMake's unity build), so the headers they all
# include are parsed a few times instead of once per file. Two of Gloo's files keep their own units: their
# file-local names clash with other files' (allreduce.cc's ReductionFunction, pair.cc's buffer sizes).
if(TARGET tensorflow)
    set_target_properties(tensorflow PROPERTIES UNITY_BUILD ON)
endif()
if(TARGET compatible17_gloo AND CMAKE_VERSION VERSION_GREATER_EQUAL 3.18)
    set_target_properties(compatible17_gloo PROPERTIES UNITY_BUILD ON)
    get_target_property(GLOO17_DIR compatible17_gloo SOURCE_DIR)
    set_source_files_properties("${GLOO17_DIR}/allreduce.cc" "${GLOO17_DIR}/transport/tcp/pair.cc"
                                TARGET_DIRECTORY compatible17_gloo PROPERTIES SKIP_UNITY_BUILD_INCLUSION ON)
endif()
CMAKE
for lang in C CXX; do
  FLAGS_LINE="string(REPLACE \"-O2\" \"-O3\" CMAKE_${lang}_FLAGS_RELWITHDEBINFO \"\${CMAKE_${lang}_FLAGS_RELWITHDEBINFO}\")"
  grep -qxF "$FLAGS_LINE" "$SRC/CMakeLists.txt" \
    || die "patch pattern '$FLAGS_LINE' not found in $SRC/CMakeLists.txt (Horovod version changed? update this script)"
  sed -i "/^string(REPLACE \"-O2\" \"-O3\" CMAKE_${lang}_FLAGS_RELWITHDEBINFO /a string(REGEX REPLACE \"(^| )-g( |\$)\" \" \" CMAKE_${lang}_FLAGS_RELWITHDEBINFO \"\${CMAKE_${lang}_FLAGS_RELWITHDEBINFO}\")" \
    "$SRC/CMakeLists.txt"
  grep -qF "string(REGEX REPLACE \"(^| )-g( |\$)\" \" \" CMAKE_${lang}_FLAGS_RELWITHDEBINFO" "$SRC/CMakeLists.txt" \
    || die "sed did not drop -g from CMAKE_${lang}_FLAGS_RELWITHDEBINFO in $SRC/CMakeLists.txt"
done
log "patched the CMake files: xla_mpi_ops.cc only for GPU builds, the unused C++11 Gloo not built, no debug info, Horovod's and Gloo's sources as unity builds"

export HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
       HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 HOROVOD_LOCAL_VERSION="$LOCAL_LABEL"
# Horovod's setup.py runs make -j8 unless MAKEFLAGS is set; match the machine instead.
export MAKEFLAGS=${MAKEFLAGS:--j$(nproc 2>/dev/null || echo 2)}
# The build runs cmake/make and python from this venv.
export PATH="$BIN_DIR:$PATH"
BUILD_LOG="$WORK/build.log"
log "building wheel (log: $BUILD_LOG, kept on failure as ${CACHE_DIR}/horovod-build-failed.log)"
start=$(date +%s)
if ! pip wheel --no-deps --no-build-isolation -v -w "$WORK/dist" "$SRC" >"$BUILD_LOG" 2>&1; then
  mkdir -p "$CACHE_DIR" && cp "$BUILD_LOG" "$CACHE_DIR/horovod-build-failed.log"
  grep -nE 'error|Error' "$BUILD_LOG" | head -n 20 >&2 || true
  tail -n 30 "$BUILD_LOG" >&2
  die "building horovod failed; full log: $CACHE_DIR/horovod-build-failed.log"
fi
log "build took $(( $(date +%s) - start )) s"

built=$(ls "$WORK"/dist/$WHEEL_GLOB 2>/dev/null | head -n1 || true)
[ -n "$built" ] || die "build finished but no wheel matching $WHEEL_GLOB in $WORK/dist: $(ls "$WORK/dist")"
mkdir -p "$CACHE_DIR"
cp "$built" "$CACHE_DIR/.$(basename "$built").tmp" && mv "$CACHE_DIR/.$(basename "$built").tmp" "$CACHE_DIR/$(basename "$built")"
log "cached wheel: $CACHE_DIR/$(basename "$built")"

# --- 5. Install ------------------------------------------------------------------------------------------------
[ "$WHEEL_ONLY" = 1 ] || install_wheel "$CACHE_DIR/$(basename "$built")"
