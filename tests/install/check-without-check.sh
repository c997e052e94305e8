#!/usr/bin/env bash
# check-without-check.sh SRC — a machine without Check (the unit-test
# framework): pkg-config is pointed at a copy of the system's .pc directories
# without check.pc, then
#   - a plain `cmake -S SRC -B …` configures with a warning that the tests are
#     not built, and build + install succeed (library, tool, headers, package);
#   - -DMSGBUS_REQUIRE_TESTS=ON fails the configuration, naming Check;
#   - scripts/build (which passes it) fails.
# The library's own dependencies stay visible (docs/packaging.md).
set -euo pipefail
src=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
unset PKG_CONFIG_PATH CMAKE_PREFIX_PATH
fail() { echo "FAIL: $*" >&2; exit 1; }
# has LOG TEXT: CMake wraps its messages; compare with the lines joined
has() { tr -s ' \n' '  ' <"$1" | grep -qF "$2"; }

# Every .pc file pkg-config would find, but check.pc.
pc=$work/pc
mkdir -p "$pc"
IFS=: read -r -a dirs <<<"$(pkg-config --variable pc_path pkg-config)"
for d in "${dirs[@]}"; do
  [ -d "$d" ] || continue
  for f in "$d"/*.pc; do
    [ -e "$f" ] || continue
    n=$(basename "$f")
    [ "$n" = check.pc ] && continue
    [ -e "$pc/$n" ] || ln -s "$f" "$pc/$n"
  done
done
export PKG_CONFIG_LIBDIR=$pc
pkg-config --exists jansson || fail "jansson is not visible through $pc: the set-up is wrong"
if pkg-config --exists check; then fail "check is still visible to pkg-config"; fi
echo "pkg-config sees no check (PKG_CONFIG_LIBDIR=$pc)"

echo "== plain configure, build, install without Check"
b=$work/build
cmake -S "$src" -B "$b" -DMSGBUS_BUILD_BENCH=OFF >"$work/configure.log" 2>&1 ||
  { cat "$work/configure.log"; fail "configure failed without Check"; }
has "$work/configure.log" 'the tests are NOT built' ||
  { cat "$work/configure.log"; fail "configure printed no notice that the tests are skipped"; }
sed -n '/CMake Warning/,/^$/p' "$work/configure.log"
grep -q '^MSGBUS_BUILD_TESTS:BOOL=ON$' "$b/CMakeCache.txt" || fail "MSGBUS_BUILD_TESTS is not ON by default"
[ ! -e "$b/tests" ] || fail "tests were configured though Check is missing"
cmake --build "$b" -j2 >"$work/build.log" 2>&1 || { tail -40 "$work/build.log"; fail "build failed without Check"; }
cmake --install "$b" --prefix "$work/prefix" >"$work/install.log" 2>&1 ||
  { cat "$work/install.log"; fail "install failed without Check"; }
for f in libmsgbus.so libmsgbus.a pkgconfig/msgbus.pc cmake/msgbus/msgbusConfig.cmake; do
  [ -n "$(find "$work/prefix" -path "*/$f" | head -n1)" ] || fail "$f is not installed"
done
[ -x "$work/prefix/bin/msgbus" ] || fail "bin/msgbus is not installed"
[ -f "$work/prefix/include/msgbus/msgbus.h" ] || fail "include/msgbus/msgbus.h is not installed"
echo "configured (tests skipped with a warning), built and installed"

echo "== -DMSGBUS_REQUIRE_TESTS=ON without Check"
if cmake -S "$src" -B "$work/req" -DMSGBUS_REQUIRE_TESTS=ON >"$work/req.log" 2>&1; then
  cat "$work/req.log"; fail "MSGBUS_REQUIRE_TESTS=ON configured without Check"
fi
has "$work/req.log" "Check (the C unit-test framework, pkg-config module 'check') was not found; MSGBUS_REQUIRE_TESTS is ON" ||
  { cat "$work/req.log"; fail "the failure does not name Check"; }
echo "configuration refused, naming Check"

echo "== scripts/build without Check"
if "$src/scripts/build" "$work/sb" >"$work/sb.log" 2>&1; then
  cat "$work/sb.log"; fail "scripts/build succeeded without Check"
fi
has "$work/sb/build.log" "MSGBUS_REQUIRE_TESTS is ON" ||
  { cat "$work/sb.log"; fail "scripts/build failed, but not on Check"; }
echo "scripts/build fails"
echo "without-Check check passed"
