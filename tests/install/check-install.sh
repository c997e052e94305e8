#!/usr/bin/env bash
# check-install.sh SRC BUILD — installs the build tree into a scratch prefix,
# then builds examples/hello.c against the *installed* library as a user
# would, four ways, and runs each on mem://:
#   CMake   find_package(msgbus CONFIG) → msgbus::msgbus and msgbus::msgbus_static
#   pkg-config --libs msgbus            → the shared library
#   pkg-config --static --libs msgbus   → the archive (from a prefix holding no .so)
# and checks what the package promises (docs/packaging.md): the shared
# library needs none of its dependencies' .pc files nor their CMake lookups,
# the exported targets name nothing undefined and the include directory once,
# the man pages in docs/man are installed, only msgbus_* symbols are exported.
set -euo pipefail
src=$1 build=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
unset PKG_CONFIG_PATH CMAKE_PREFIX_PATH
fail() { echo "FAIL: $*" >&2; exit 1; }

prefix=$work/prefix
cmake --install "$build" --prefix "$prefix" >/dev/null
so=$(find "$prefix" -name 'libmsgbus.so' | head -n1)
[ -n "$so" ] || fail "no libmsgbus.so installed under $prefix"
libdir=$(dirname "$so")
[ -f "$libdir/libmsgbus.a" ] || fail "no libmsgbus.a installed in $libdir"
pcdir=$libdir/pkgconfig
cmdir=$libdir/cmake/msgbus

# run EXE NAME: hello on mem:// must print "done"
run() {
  env -u MSGBUS_URL LD_LIBRARY_PATH="$libdir" "$1" >"$work/$2.out" 2>&1 ||
    { cat "$work/$2.out"; fail "$2: hello exited with an error"; }
  grep -q '^done$' "$work/$2.out" || { cat "$work/$2.out"; fail "$2: hello did not print 'done'"; }
  echo "$2: ran on mem://"
}
# linked EXE NAME shared|static: is libmsgbus.so a NEEDED entry or not
linked() {
  if readelf -d "$1" | grep -q 'NEEDED.*libmsgbus\.so'; then
    [ "$3" = shared ] || fail "$2: linked to libmsgbus.so, want the archive"
  else
    [ "$3" = static ] || fail "$2: not linked to libmsgbus.so"
  fi
}

echo "== exported CMake targets"
if grep -n 'IMPORTED_LINK_DEPENDENT_LIBRARIES' "$cmdir"/*.cmake; then
  fail "the exported targets name IMPORTED_LINK_DEPENDENT_LIBRARIES (targets the package does not define)"
fi
echo "no IMPORTED_LINK_DEPENDENT_LIBRARIES"

echo "== find_package(msgbus CONFIG REQUIRED COMPONENTS static): msgbus::msgbus and msgbus::msgbus_static"
mkdir -p "$work/fp"
cat >"$work/fp/CMakeLists.txt" <<CM
cmake_minimum_required(VERSION 3.18)
project(hello_user C)
find_package(msgbus CONFIG REQUIRED COMPONENTS static)
foreach(t msgbus::msgbus msgbus::msgbus_static)
  get_target_property(inc \${t} INTERFACE_INCLUDE_DIRECTORIES)
  list(LENGTH inc n)
  if(NOT n EQUAL 1)
    message(FATAL_ERROR "\${t}: INTERFACE_INCLUDE_DIRECTORIES has \${n} entries, want 1: \${inc}")
  endif()
endforeach()
add_executable(hello_shared $src/examples/hello.c)
target_link_libraries(hello_shared PRIVATE msgbus::msgbus)
add_executable(hello_static $src/examples/hello.c)
target_link_libraries(hello_static PRIVATE msgbus::msgbus_static)
CM
cmake -S "$work/fp" -B "$work/fp/build" -DCMAKE_PREFIX_PATH="$prefix" >"$work/fp.log" 2>&1 ||
  { cat "$work/fp.log"; fail "find_package(msgbus) project did not configure"; }
cmake --build "$work/fp/build" >>"$work/fp.log" 2>&1 ||
  { cat "$work/fp.log"; fail "find_package(msgbus) project did not build"; }
linked "$work/fp/build/hello_shared" cmake-shared shared
run "$work/fp/build/hello_shared" cmake-shared
linked "$work/fp/build/hello_static" cmake-static static
run "$work/fp/build/hello_static" cmake-static

echo "== find_package(msgbus) with the dependencies' .pc files hidden"
# The shared library's users need nothing but msgbus; asking for the static
# component there fails and names what is missing.
empty=$work/no-pc
mkdir -p "$empty" "$work/fp2"
cat >"$work/fp2/CMakeLists.txt" <<CM
cmake_minimum_required(VERSION 3.18)
project(hello_user C)
find_package(msgbus CONFIG REQUIRED)
if(TARGET msgbus::msgbus_static)
  message(FATAL_ERROR "msgbus::msgbus_static defined though its dependencies are hidden")
endif()
add_executable(hello_shared $src/examples/hello.c)
target_link_libraries(hello_shared PRIVATE msgbus::msgbus)
CM
PKG_CONFIG_LIBDIR=$empty cmake -S "$work/fp2" -B "$work/fp2/build" -DCMAKE_PREFIX_PATH="$prefix" \
  >"$work/fp2.log" 2>&1 || { cat "$work/fp2.log"; fail "find_package(msgbus) needs the dependencies' .pc files"; }
cmake --build "$work/fp2/build" >>"$work/fp2.log" 2>&1 || { cat "$work/fp2.log"; fail "shared consumer did not build"; }
run "$work/fp2/build/hello_shared" cmake-shared-no-deps
mkdir -p "$work/fp3"
sed 's/find_package(msgbus CONFIG REQUIRED)/find_package(msgbus CONFIG REQUIRED COMPONENTS static)/' \
  "$work/fp2/CMakeLists.txt" >"$work/fp3/CMakeLists.txt"
if PKG_CONFIG_LIBDIR=$empty cmake -S "$work/fp3" -B "$work/fp3/build" -DCMAKE_PREFIX_PATH="$prefix" \
     >"$work/fp3.log" 2>&1; then
  cat "$work/fp3.log"; fail "COMPONENTS static was found without its dependencies"
fi
grep -q 'msgbus::msgbus_static needs dependencies that were not found: jansson' "$work/fp3.log" ||
  { cat "$work/fp3.log"; fail "COMPONENTS static failed without naming the missing dependency"; }
echo "COMPONENTS static without its dependencies: refused, naming jansson"

echo "== pkg-config --libs msgbus (only msgbus.pc visible)"
export PKG_CONFIG_LIBDIR=$pcdir
[ -z "$(pkg-config --print-requires-private msgbus)" ] || fail "msgbus.pc has Requires.private: $(pkg-config --print-requires-private msgbus)"
[ -z "$(pkg-config --print-requires msgbus)" ] || fail "msgbus.pc has Requires: $(pkg-config --print-requires msgbus)"
# shellcheck disable=SC2046
cc -o "$work/hello-pc" "$src/examples/hello.c" $(pkg-config --cflags --libs msgbus) ||
  fail "cc with pkg-config --libs msgbus failed"
linked "$work/hello-pc" pc-shared shared
run "$work/hello-pc" pc-shared

echo "== pkg-config --static --libs msgbus (a prefix with the archive only)"
sprefix=$work/static-prefix
cp -a "$prefix" "$sprefix"
slibdir=${libdir/#$prefix/$sprefix}
rm -f "$slibdir"/libmsgbus.so*
export PKG_CONFIG_LIBDIR=$slibdir/pkgconfig
# Without --static the archive's dependencies are missing: the link must fail,
# so the success below is Libs.private's doing.
# shellcheck disable=SC2046
if cc -o "$work/hello-pc-nostatic" "$src/examples/hello.c" $(pkg-config --cflags --libs msgbus) 2>/dev/null; then
  fail "the archive linked without pkg-config --static: the check below proves nothing"
fi
# shellcheck disable=SC2046
cc -o "$work/hello-pc-static" "$src/examples/hello.c" $(pkg-config --static --cflags --libs msgbus) ||
  fail "cc with pkg-config --static --libs msgbus failed: $(pkg-config --static --libs msgbus)"
linked "$work/hello-pc-static" pc-static static
run "$work/hello-pc-static" pc-static
unset PKG_CONFIG_LIBDIR

echo "== man pages"
if [ -d "$src/docs/man" ]; then
  mandir=$(dirname "$(find "$prefix" -type d -name man3 -path '*/man/*' | head -n1)")
  [ "$mandir" != . ] || fail "docs/man exists but no man3 directory was installed"
  for p in man3/msgbus_open.3 man1/msgbus.1; do
    [ -f "$mandir/$p" ] || fail "$p is not installed (in $mandir)"
  done
  n=0
  for p in "$src"/docs/man/man1/*.1 "$src"/docs/man/man3/*.3; do
    [ -f "$p" ] || continue
    sec=$(basename "$(dirname "$p")")
    [ -f "$mandir/$sec/$(basename "$p")" ] || fail "$sec/$(basename "$p") is in docs/man but not installed (build again: the build re-reads docs/man)"
    n=$((n + 1))
  done
  echo "$n man pages installed in $mandir"
else
  echo "no docs/man in $src: nothing to install"
fi

echo "== exported symbols"
bad=$(nm -D --defined-only "$so" | awk '{print $3}' | grep -v '^msgbus_' || true)
if [ -n "$bad" ]; then
  echo "non-msgbus_ symbols exported:"; echo "$bad"; exit 1
fi
echo "only msgbus_ symbols exported ($(nm -D --defined-only "$so" | wc -l))"
echo "install check passed"
