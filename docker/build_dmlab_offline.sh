#!/usr/bin/env bash
# DeepMind Lab built offline, on Debian 12, from a lab source tree that may lack its large assets
# (docs/USAGE.md, "DeepMind Lab offline"). Nothing is downloaded: Bazel, the C/C++ libraries and
# googletest come from Debian's packages, abseil and rules_cc from local git snapshots, and every
# missing texture gets a flat-colour placeholder that is NOT the real visual.
#
#   build_dmlab_offline.sh apt           the Debian packages (bazel-bootstrap, SDL2, OSMesa, ...)
#   build_dmlab_offline.sh source        lab's tree from $LAB_GIT (a bare repository) at $LAB_REV,
#                                        skipping the blobs the snapshot lacks
#   build_dmlab_offline.sh placeholders  a placeholder for each missing .tga, and their manifest
#   build_dmlab_offline.sh deps          one local Bazel repository for each WORKSPACE archive
#   build_dmlab_offline.sh build         bazel build of the pip package, wheel in $WHEEL_DIR
#   build_dmlab_offline.sh install       the wheel into $VENV, then an import check
#   build_dmlab_offline.sh all           every step above but apt, in order
#
# Settings come from the environment; defaults below. Everything is written under $WORK, outside
# this repository.
set -euo pipefail

WORK="${WORK:-/work/dmlab_build}"
LAB_GIT="${LAB_GIT:-/work/.mirror/google-deepmind+lab/repo}"
LAB_REV="${LAB_REV:-HEAD}"
ABSL_GIT="${ABSL_GIT:-/work/.mirror/abseil+abseil-cpp/repo}"
# The newest abseil LTS whose Bazel files Debian's Bazel 4 still reads; it has absl/log.
ABSL_REV="${ABSL_REV:-20230802.1}"
RULES_CC_GIT="${RULES_CC_GIT:-/work/.mirror/bazelbuild+rules_cc/repo}"
# The rules_cc commit that Bazel 4.2.3 itself pins; Debian's bazel-rules-cc 0.0.4 needs Bazel 5.
RULES_CC_REV="${RULES_CC_REV:-b1c40e1de81913a3c40e5948f78719c28152486d}"
VENV="${VENV:-$(cd "$(dirname "$0")/.." && pwd)/.venv}"
LAB_SRC="${LAB_SRC:-${WORK}/lab}"
DEPS_DIR="${DEPS_DIR:-${WORK}/deps}"
WHEEL_DIR="${WHEEL_DIR:-${WORK}/wheels}"
BAZEL_JOBS="${BAZEL_JOBS:-2}"
MULTIARCH="$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)"

log() { printf '== build_dmlab_offline.sh: %s\n' "$*" >&2; }

step_apt() {
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y --no-install-recommends bazel-bootstrap bazel-skylib bazel-rules-cc \
    bazel-rules-java bazel-rules-proto bazel-platforms build-essential \
    zip unzip gettext libffi-dev libsdl2-dev libosmesa6-dev libgl-dev libegl-dev zlib1g-dev \
    libpng-dev libjpeg-dev libglib2.0-dev libxml2-dev liblua5.1-0-dev libeigen3-dev \
    pybind11-dev googletest libgtest-dev
}

# A tree of $LAB_REV with every file whose blob the repository lacks left out. Lab's BUILD
# names assets only through globs, so the build still resolves.
step_source() {
  local index="${WORK}/lab.index"
  mkdir -p "${WORK}"
  rm -rf "${LAB_SRC}" "${index}"
  mkdir -p "${LAB_SRC}"
  # A bare repository serves as a work tree only with core.bare unset.
  export GIT_DIR="${LAB_GIT}" GIT_INDEX_FILE="${index}" GIT_WORK_TREE="${LAB_SRC}"
  export GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=core.bare GIT_CONFIG_VALUE_0=false
  git read-tree "${LAB_REV}"
  git ls-files -s | while read -r _mode sha _stage path; do
    git cat-file -e "${sha}" 2>/dev/null || printf '%s\n' "${path}"
  done >"${WORK}/missing.txt"
  git update-index --force-remove --stdin <"${WORK}/missing.txt"
  git checkout-index -a --prefix="${LAB_SRC}/"
  git rev-parse "${LAB_REV}" >"${LAB_SRC}/.lab_commit"
  unset GIT_DIR GIT_INDEX_FILE GIT_WORK_TREE GIT_CONFIG_COUNT GIT_CONFIG_KEY_0 GIT_CONFIG_VALUE_0
  log "lab $(cat "${LAB_SRC}/.lab_commit"): $(find "${LAB_SRC}" -type f | wc -l) files," \
    "$(wc -l <"${WORK}/missing.txt") missing (list in ${WORK}/missing.txt)"
}

# Each missing texture becomes an opaque uncompressed TGA of one colour derived from its name: the
# colour a colour word in it names (lg_style_01_wall_blue_d is blue, wall_dblue dark blue), else a
# hash of the name; a small hash offset keeps same-colour textures apart. Language levels name
# rooms by their colour, so the words keep their meaning. They are NOT the real visuals;
# PLACEHOLDER_TEXTURES.txt in lab's tree lists every one. The size is the real files' own: every
# missing one is just over 4 MiB, a 1024x1024 RGBA TGA, and lab's Lua checks that the textures
# it combines (an object's and its pattern) have the same shape.
step_placeholders() {
  python3 - "${LAB_SRC}" "${WORK}/missing.txt" <<'PY'
import hashlib
import os
import struct
import sys

COLOURS = {
    'red': (200, 40, 40), 'green': (50, 170, 60), 'blue': (40, 70, 210),
    'yellow': (225, 205, 40), 'orange': (235, 125, 30), 'purple': (135, 50, 175),
    'cyan': (40, 195, 205), 'cerise': (220, 40, 125), 'white': (230, 230, 225),
}


def colour(name):
    digest = hashlib.sha256(name.encode()).digest()
    base = None
    for word in name.split('_'):
        if word in COLOURS:
            base = COLOURS[word]
        elif word[:1] in ('d', 'l') and word[1:] in COLOURS:  # dblue, lgreen
            c = COLOURS[word[1:]]
            base = tuple(v * 0.55 if word[0] == 'd' else v + (255 - v) * 0.45 for v in c)
        elif word == 'bright' and base is not None:
            base = tuple(v + (255 - v) * 0.3 for v in base)
    if base is None:
        # Each channel in 40..215: visible in the dark and the light levels alike.
        return tuple(40 + d % 176 for d in digest[:3])
    return tuple(int(min(255, max(0, v + d % 25 - 12))) for v, d in zip(base, digest))


root, missing = sys.argv[1:]
made = []
for path in open(missing).read().split():
    if not path.endswith('.tga'):
        continue
    r, g, b = colour(os.path.splitext(os.path.basename(path))[0])
    size = 1024
    # Uncompressed true-colour, 32 bits per pixel with 8 of alpha.
    header = struct.pack('<BBBHHBHHHHBB', 0, 0, 2, 0, 0, 0, 0, 0, size, size, 32, 8)
    os.makedirs(os.path.join(root, os.path.dirname(path)), exist_ok=True)
    with open(os.path.join(root, path), 'wb') as f:
        f.write(header + bytes((b, g, r, 255)) * (size * size))
    made.append('%s #%02x%02x%02x' % (path, r, g, b))
with open(os.path.join(root, 'PLACEHOLDER_TEXTURES.txt'), 'w') as f:
    f.write('# NOT the real visuals: flat-colour placeholders for textures missing from the\n'
            '# source snapshot (written by scalable_agent2 docker/build_dmlab_offline.sh).\n')
    f.write('\n'.join(made) + '\n')
print('wrote %d placeholder textures (NOT the real visuals)' % len(made))
PY
}

# One directory per repository: a WORKSPACE and a BUILD whose targets keep lab's names.
new_repo() {
  local name="$1"
  rm -rf "${DEPS_DIR:?}/${name}"
  mkdir -p "${DEPS_DIR}/${name}"
  printf 'workspace(name = "%s")\n' "${name}" >"${DEPS_DIR}/${name}/WORKSPACE"
  cat >"${DEPS_DIR}/${name}/BUILD"
}

# A repository exported from a local git snapshot at a fixed revision.
git_repo() {
  local name="$1" git_dir="$2" rev="$3"
  rm -rf "${DEPS_DIR:?}/${name}"
  mkdir -p "${DEPS_DIR}/${name}"
  git --git-dir="${git_dir}" archive "${rev}" | tar -x -C "${DEPS_DIR}/${name}"
}

# A Debian library: headers through symlinked include directories, the library by -l.
system_cc_repo() {
  local name="$1" target="$2" linkopts="$3"
  shift 3
  local includes=() globs=() dir i=0
  new_repo "${name}" </dev/null
  for dir in "$@"; do
    ln -s "${dir}" "${DEPS_DIR}/${name}/inc${i}"
    includes+=("\"inc${i}\"")
    globs+=("\"inc${i}/**/*.h\"")
    i=$((i + 1))
  done
  cat >"${DEPS_DIR}/${name}/BUILD" <<EOF
# Debian's ${target}, written by build_dmlab_offline.sh.
cc_library(
    name = "${target}",
    hdrs = glob([$(IFS=,; echo "${globs[*]}")], allow_empty = True),
    includes = [$(IFS=,; echo "${includes[*]}")],
    linkopts = [${linkopts}],
    visibility = ["//visibility:public"],
)
EOF
}

step_deps() {
  mkdir -p "${DEPS_DIR}"
  local inc=/usr/include lib="/usr/lib/${MULTIARCH}"
  git_repo com_google_absl "${ABSL_GIT}" "${ABSL_REV}"
  git_repo rules_cc "${RULES_CC_GIT}" "${RULES_CC_REV}"
  # Debian's Bazel rules already are Bazel repositories; Bazel 4's own tools need them.
  local name dir
  for name in bazel_skylib=tools/skylib platforms=tools/platforms rules_java=rules/java \
    rules_proto=rules/proto; do
    dir="/usr/share/bazel/${name#*=}"
    rm -rf "${DEPS_DIR:?}/${name%%=*}"
    ln -s "${dir}" "${DEPS_DIR}/${name%%=*}"
  done

  system_cc_repo zlib_archive zlib '"-lz"'
  system_cc_repo png_archive png '"-lpng16", "-lz", "-lm"' "${inc}/libpng16"
  system_cc_repo jpeg_archive jpeg '"-ljpeg"'
  system_cc_repo glib_archive glib '"-lglib-2.0"' "${inc}/glib-2.0" "${lib}/glib-2.0/include"
  # Debian's libxml2 is built with ICU, whose headers pull in <stdbool.h>, which q3map2's own
  # `bool` typedef cannot sit beside. Lab builds libxml2 without ICU; the headers here say so
  # too. ICU only adds the last two members of xmlCharEncodingHandler, which lab never touches.
  rm -rf "${WORK}/libxml2_headers"
  mkdir -p "${WORK}/libxml2_headers/libxml"
  ln -s "${inc}"/libxml2/libxml/*.h "${WORK}/libxml2_headers/libxml/"
  rm "${WORK}/libxml2_headers/libxml/xmlversion.h"
  sed 's|^#define LIBXML_ICU_ENABLED$|/* LIBXML_ICU_ENABLED: off, as in lab'"'"'s own build */|' \
    "${inc}/libxml2/libxml/xmlversion.h" >"${WORK}/libxml2_headers/libxml/xmlversion.h"
  system_cc_repo libxml_archive libxml '"-lxml2"' "${WORK}/libxml2_headers"
  system_cc_repo lua_archive lua '"-llua5.1"' "${inc}/lua5.1"

  new_repo eigen_archive <<'EOF'
# Debian's Eigen 3.4 (header only), written by build_dmlab_offline.sh.
cc_library(
    name = "eigen",
    hdrs = glob(["inc0/Eigen/**", "inc0/unsupported/**"]),
    defines = ["EIGEN_MPL2_ONLY"],
    includes = ["inc0"],
    visibility = ["//visibility:public"],
)
EOF
  ln -s "${inc}/eigen3" "${DEPS_DIR}/eigen_archive/inc0"

  new_repo pybind11_archive <<'EOF'
# Debian's pybind11 (header only), written by build_dmlab_offline.sh.
cc_library(
    name = "pybind11",
    hdrs = glob(["inc0/pybind11/**/*.h"]),
    copts = ["-fexceptions"],
    includes = ["inc0"],
    visibility = ["//visibility:public"],
    deps = ["@python_system//:python_headers"],
)
EOF
  ln -s "${inc}" "${DEPS_DIR}/pybind11_archive/inc0"

  new_repo com_google_googletest <<'EOF'
# Debian's googletest, written by build_dmlab_offline.sh.
cc_library(
    name = "gtest",
    linkopts = ["-lgmock", "-lgtest", "-pthread"],
    visibility = ["//visibility:public"],
)

cc_library(
    name = "gtest_main",
    linkopts = ["-lgmock", "-lgtest_main", "-lgtest", "-pthread"],
    visibility = ["//visibility:public"],
)
EOF
  log "repositories in ${DEPS_DIR}: $(cd "${DEPS_DIR}" && echo *)"
}

bazel_flags() {
  local repo
  for repo in "${DEPS_DIR}"/*; do
    printf -- '--override_repository=%s=%s\n' "$(basename "${repo}")" "$(readlink -f "${repo}")"
  done
}

step_build() {
  # python_system.bzl runs `python3` from PATH: the venv's, whose NumPy headers lab compiles
  # against.
  export PATH="${VENV}/bin:${PATH}"
  "${VENV}/bin/pip" install -q setuptools wheel
  cd "${LAB_SRC}"
  mapfile -t overrides < <(bazel_flags)
  bazel build -c opt --jobs="${BAZEL_JOBS}" --cxxopt=-std=c++17 "${overrides[@]}" \
    //python/pip_package:build_pip_package
  mkdir -p "${WHEEL_DIR}"
  PYTHON_BIN_PATH="${VENV}/bin/python" \
    ./bazel-bin/python/pip_package/build_pip_package "${WHEEL_DIR}"
  ls -l "${WHEEL_DIR}"
}

step_install() {
  local wheels=("${WHEEL_DIR}"/deepmind_lab-*.whl)
  [[ -f "${wheels[0]}" ]] || { log "no DeepMind Lab wheel in ${WHEEL_DIR}"; exit 1; }
  # The wheel's own __init__ imports its dm_env bindings, hence the extra.
  "${VENV}/bin/pip" install --force-reinstall --no-deps "${wheels[0]}"
  "${VENV}/bin/pip" install "${wheels[0]}[dmenv_module]"
  # The manifest goes with the engine, so that every run can say it sees placeholders.
  if [[ -f "${LAB_SRC}/PLACEHOLDER_TEXTURES.txt" ]]; then
    cp "${LAB_SRC}/PLACEHOLDER_TEXTURES.txt" "$("${VENV}/bin/python" -c \
      'import importlib.util; print(importlib.util.find_spec("deepmind_lab").submodule_search_locations[0])')/"
  fi
  "${VENV}/bin/python" -c 'import deepmind_lab; print("deepmind_lab from", deepmind_lab.__file__)'
}

main() {
  local steps=(apt source placeholders deps build install)
  if [[ $# -ne 1 ]]; then
    echo "usage: $0 $(IFS='|'; echo "${steps[*]}")|all" >&2
    exit 2
  fi
  case "$1" in
    apt) step_apt ;;
    source) step_source ;;
    placeholders) step_placeholders ;;
    deps) step_deps ;;
    build) step_build ;;
    install) step_install ;;
    all) for s in "${steps[@]:1}"; do "step_${s}"; done ;;
    *)
      echo "unknown step: $1 (expected $(IFS='|'; echo "${steps[*]}")|all)" >&2
      exit 2
      ;;
  esac
}

main "$@"
