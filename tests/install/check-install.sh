#!/usr/bin/env bash
# Installs the build tree into a scratch prefix, then builds and runs
# examples/hello.c against the *installed* library twice: through CMake's
# find_package(msgbus CONFIG) and through pkg-config. Proves the installed
# headers, msgbus.pc and msgbusConfig.cmake work for a user.
set -euo pipefail
src=$1 build=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
prefix=$work/prefix
cmake --install "$build" --prefix "$prefix" >/dev/null
libdir=$(dirname "$(find "$prefix" -name 'libmsgbus.so' | head -n1)")

echo "== find_package(msgbus CONFIG)"
mkdir -p "$work/fp"
cat > "$work/fp/CMakeLists.txt" <<CM
cmake_minimum_required(VERSION 3.18)
project(hello_user C)
find_package(msgbus CONFIG REQUIRED)
add_executable(hello $src/examples/hello.c)
target_link_libraries(hello PRIVATE msgbus::msgbus)
CM
cmake -S "$work/fp" -B "$work/fp/build" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build "$work/fp/build" >/dev/null
env -u MSGBUS_URL LD_LIBRARY_PATH="$libdir" "$work/fp/build/hello" | tee "$work/fp.out"
grep -q '^done$' "$work/fp.out"

echo "== pkg-config msgbus"
export PKG_CONFIG_PATH="$libdir/pkgconfig"
cc -o "$work/hello-pc" "$src/examples/hello.c" $(pkg-config --cflags --libs msgbus)
env -u MSGBUS_URL LD_LIBRARY_PATH="$libdir" "$work/hello-pc" | tee "$work/pc.out"
grep -q '^done$' "$work/pc.out"

echo "== exported symbols"
bad=$(nm -D --defined-only "$libdir/libmsgbus.so" | awk '{print $3}' | grep -v '^msgbus_' || true)
if [ -n "$bad" ]; then
  echo "non-msgbus_ symbols exported:"; echo "$bad"; exit 1
fi
echo "only msgbus_ symbols exported ($(nm -D --defined-only "$libdir/libmsgbus.so" | wc -l))"
echo "install check passed"
