#!/usr/bin/env bash
# Build steps of the scalable_agent2 Docker image (see the Dockerfile at the repository root and
# docs/USAGE.md). Each step is one subcommand, so the image's layers and a manual build on an
# Ubuntu 24.04 machine run exactly the same commands:
#
#   build_dmlab.sh python       Python 3.11 (deadsnakes) and a virtualenv at $VENV
#   build_dmlab.sh dmlab        DeepMind Lab at $DMLAB_COMMIT, built with Bazel, wheel in $WHEEL_DIR
#   build_dmlab.sh dataset      optional Brady-Konkle-Oliva psychlab stimuli in $DATASET_DIR
#   build_dmlab.sh runtime      the shared libraries DeepMind Lab needs at run time
#   build_dmlab.sh package      the DeepMind Lab wheel, then this package (CPU or GPU TensorFlow)
#   build_dmlab.sh smoke        the image's default command: test suite, then a short training run
#
# Settings come from the environment (the Dockerfile's build arguments); defaults below.
set -euo pipefail

PYTHON_VERSION="${PYTHON_VERSION:-3.11}"
VENV="${VENV:-/opt/venv}"
# DeepMind Lab source: github.com/google-deepmind/lab at a fixed commit (its WORKSPACE with the
# python_system.bzl rule that builds against the `python3` found on PATH).
DMLAB_REPO="${DMLAB_REPO:-https://github.com/google-deepmind/lab.git}"
DMLAB_COMMIT="${DMLAB_COMMIT:-cf2f5250e1a00ecce37b3480df28c3a5dcd08b57}"
BAZELISK_VERSION="${BAZELISK_VERSION:-v1.25.0}"
BAZEL_VERSION="${BAZEL_VERSION:-7.4.1}"
DMLAB_SRC="${DMLAB_SRC:-/opt/lab}"
WHEEL_DIR="${WHEEL_DIR:-/opt/wheels}"
WITH_PSYCHLAB_DATASET="${WITH_PSYCHLAB_DATASET:-0}"
DATASET_URL="${DATASET_URL:-https://bradylab.ucsd.edu/stimuli/ObjectsAll.zip}"
DATASET_DIR="${DATASET_DIR:-/opt/dmlab_data/brady_konkle_oliva2008}"
TF_VARIANT="${TF_VARIANT:-cpu}"
PACKAGE_DIR="${PACKAGE_DIR:-/opt/scalable_agent2}"
SMOKE_LEVEL="${SMOKE_LEVEL:-explore_goal_locations_small}"
SMOKE_FRAMES="${SMOKE_FRAMES:-16000}"
SMOKE_LOGDIR="${SMOKE_LOGDIR:-/tmp/agent}"

export DEBIAN_FRONTEND=noninteractive

log() { printf '== build_dmlab.sh: %s\n' "$*" >&2; }

apt_install() {
  apt-get update
  apt-get install -y --no-install-recommends "$@"
  rm -rf /var/lib/apt/lists/*
}

step_python() {
  apt_install ca-certificates curl gnupg software-properties-common
  add-apt-repository -y ppa:deadsnakes/ppa
  apt_install "python${PYTHON_VERSION}" "python${PYTHON_VERSION}-dev" \
    "python${PYTHON_VERSION}-venv"
  "python${PYTHON_VERSION}" -m venv "${VENV}"
  # setuptools also provides `distutils`, which DeepMind Lab's python_system.bzl imports.
  "${VENV}/bin/pip" install --no-cache-dir --upgrade pip setuptools wheel packaging
}

# DeepMind Lab's WORKSPACE downloads several dependencies from moving `master`/`main` branch
# archives, so a fixed commit alone does not give a fixed build. Point them at release tags.
pin_workspace_dependencies() {
  "${VENV}/bin/python" - WORKSPACE <<'PY'
import re
import sys

PINNED = {
    'com_google_googletest': (
        'googletest-1.17.0',
        'https://github.com/google/googletest/archive/refs/tags/v1.17.0.tar.gz',
    ),
    'bazel_skylib': (
        'bazel-skylib-1.9.0',
        'https://github.com/bazelbuild/bazel-skylib/archive/refs/tags/1.9.0.tar.gz',
    ),
    'com_google_absl': (
        'abseil-cpp-20260107.1',
        'https://github.com/abseil/abseil-cpp/archive/refs/tags/20260107.1.tar.gz',
    ),
    'com_google_absl_py': (
        'abseil-py-2.4.0',
        'https://github.com/abseil/abseil-py/archive/refs/tags/v2.4.0.tar.gz',
    ),
    'dm_env_archive': (
        'dm_env-1.5',
        'https://github.com/google-deepmind/dm_env/archive/refs/tags/v1.5.tar.gz',
    ),
    'tree_archive': (
        'tree-0.1.9',
        'https://github.com/google-deepmind/tree/archive/refs/tags/0.1.9.tar.gz',
    ),
    'pybind11_archive': (
        'pybind11-2.13.1',
        'https://github.com/pybind/pybind11/archive/refs/tags/v2.13.1.tar.gz',
    ),
}
path = sys.argv[1]
text = open(path).read()
for name, (prefix, url) in PINNED.items():
    block = re.compile(r'(http_archive\(\s*name = "%s",.*?\n\))' % re.escape(name), re.S)
    match = block.search(text)
    if match is None or not re.search(r'-(master|main)"', match.group(1)):
        continue  # Absent, or already pinned upstream.
    new = re.sub(r'strip_prefix = "[^"]*"', 'strip_prefix = "%s"' % prefix, match.group(1))
    new = re.sub(r'urls = \[[^\]]*\]', 'urls = ["%s"]' % url, new)
    text = text[: match.start()] + new + text[match.end() :]
    print('pinned', name, '->', prefix)
open(path, 'w').write(text)
PY
}

step_dmlab() {
  # Build dependencies from DeepMind Lab's docs/users/build.md (Python from $VENV instead of
  # the system's; EGL/GL headers for its hardware-rendering library).
  apt_install build-essential git zip unzip gettext libffi-dev libsdl2-dev libosmesa6-dev \
    libgl-dev libegl-dev
  # NumPy must be the one used at run time: DeepMind Lab compiles against its headers.
  "${VENV}/bin/pip" install --no-cache-dir "numpy>=2,<3"
  curl -fsSL -o /usr/local/bin/bazel \
    "https://github.com/bazelbuild/bazelisk/releases/download/${BAZELISK_VERSION}/bazelisk-linux-amd64"
  chmod +x /usr/local/bin/bazel
  export USE_BAZEL_VERSION="${BAZEL_VERSION}"

  git clone --quiet "${DMLAB_REPO}" "${DMLAB_SRC}"
  cd "${DMLAB_SRC}"
  git checkout --quiet "${DMLAB_COMMIT}"
  log "DeepMind Lab at $(git rev-parse HEAD)"
  pin_workspace_dependencies

  # python_system.bzl runs `python3` from PATH: make it the virtualenv's Python 3.11.
  export PATH="${VENV}/bin:${PATH}"
  # Python 3 is Bazel's default; abseil needs C++17.
  bazel build -c opt --cxxopt=-std=c++17 //python/pip_package:build_pip_package
  PYTHON_BIN_PATH="${VENV}/bin/python" \
    ./bazel-bin/python/pip_package/build_pip_package "${WHEEL_DIR}"
  ls -l "${WHEEL_DIR}"
  bazel shutdown || true
}

step_dataset() {
  mkdir -p "${DATASET_DIR}"
  if [[ "${WITH_PSYCHLAB_DATASET}" != 1 ]]; then
    log 'psychlab dataset skipped (build with --build-arg WITH_PSYCHLAB_DATASET=1 to add it)'
    return 0
  fi
  apt_install unzip
  "${VENV}/bin/pip" install --no-cache-dir pillow
  local tmp
  tmp="$(mktemp -d)"
  curl -fsSL -o "${tmp}/ObjectsAll.zip" "${DATASET_URL}"
  unzip -q "${tmp}/ObjectsAll.zip" -d "${tmp}"
  # DeepMind Lab's data/brady_konkle_oliva2008/README.md: the sorted JPEGs as 0001.png, ...
  "${VENV}/bin/python" - "${tmp}/OBJECTSALL" "${DATASET_DIR}" <<'PY'
import os
import sys

from PIL import Image

src, dst = sys.argv[1:]
files = sorted(f for f in os.listdir(src) if f.lower().endswith('.jpg'))
for i, name in enumerate(files):
    Image.open(os.path.join(src, name)).save(os.path.join(dst, '%04d.png' % (i + 1)))
print('wrote', len(files), 'images to', dst)
PY
  rm -rf "${tmp}"
}

step_runtime() {
  # Software (OSMesa) and hardware (EGL) rendering and SDL. Newer Mesa releases drop OSMesa
  # (libosmesa6), one reason the image stays on Ubuntu 24.04.
  apt_install ca-certificates libosmesa6 libegl1 libgl1 libsdl2-2.0-0 libffi8 zlib1g
}

step_package() {
  local wheels=("${WHEEL_DIR}"/deepmind_lab-*.whl)
  if [[ ! -f "${wheels[0]}" ]]; then
    log "no DeepMind Lab wheel in ${WHEEL_DIR}"
    exit 1
  fi
  "${VENV}/bin/pip" install --no-cache-dir "${wheels[@]}"
  cd "${PACKAGE_DIR}"
  "${VENV}/bin/pip" install --no-cache-dir -e ".[test]"
  case "${TF_VARIANT}" in
    cpu) ;;
    gpu)
      local tf
      tf="$(grep -E '^tensorflow==' requirements.txt)"
      "${VENV}/bin/pip" install --no-cache-dir "tensorflow[and-cuda]==${tf#tensorflow==}"
      ;;
    *)
      log "TF_VARIANT must be cpu or gpu, got ${TF_VARIANT}"
      exit 1
      ;;
  esac
  "${VENV}/bin/python" -c 'import deepmind_lab, tensorflow as tf; print("TF", tf.__version__)'
}

step_smoke() {
  cd "${PACKAGE_DIR}"
  "${VENV}/bin/python" -m pytest -q
  local dataset_flag=()
  if [[ -n "$(ls -A "${DATASET_DIR}" 2>/dev/null)" ]]; then
    dataset_flag=(--dataset_path="${DATASET_DIR}")
  fi
  "${VENV}/bin/python" experiments/experiment.py --level_name="${SMOKE_LEVEL}" \
    --num_actors=2 --total_environment_frames="${SMOKE_FRAMES}" --logdir="${SMOKE_LOGDIR}" \
    "${dataset_flag[@]}"
  "${VENV}/bin/python" -m scalable_agent2.plot --logdir="${SMOKE_LOGDIR}" \
    --output="${SMOKE_LOGDIR}/curves.png"
}

main() {
  if [[ $# -ne 1 ]]; then
    echo "usage: $0 python|dmlab|dataset|runtime|package|smoke" >&2
    exit 2
  fi
  case "$1" in
    python) step_python ;;
    dmlab) step_dmlab ;;
    dataset) step_dataset ;;
    runtime) step_runtime ;;
    package) step_package ;;
    smoke) step_smoke ;;
    *)
      echo "unknown step: $1 (expected python|dmlab|dataset|runtime|package|smoke)" >&2
      exit 2
      ;;
  esac
}

main "$@"
