#!/usr/bin/env bash
# check_man.sh SRCDIR LIBMSGBUS [CC [CFLAGS]] — the man pages cannot drift:
#  1. scripts/gen-man run into a scratch directory gives exactly the
#     committed docs/man/man3 and docs/man/man1 (a header comment or a CLI
#     help text changed without regenerating fails here);
#  2. every msgbus_* symbol the shared library exports (src/msgbus.map:
#     its patterns, and any name it lists) has its page, and every function
#     page is an exported symbol;
#  3. groff renders every page with all warnings on (-ww) and prints none;
#  4. the example programs of docs/man/examples (each page's EXAMPLE)
#     compile with -Werror (and CFLAGS: the sanitizer flags when the
#     library has them), link against LIBMSGBUS and run on mem://, so an
#     EXAMPLE section cannot rot.
# Missing tools (python3, groff, nm, the compiler) are failures, not skips.
set -uo pipefail
src=${1:?usage: check_man.sh SRCDIR LIBMSGBUS [CC]}
lib=${2:?usage: check_man.sh SRCDIR LIBMSGBUS [CC]}
cc=${3:-cc}
read -r -a cflags <<<"${4:-}"
man=$src/docs/man
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
pass() { echo "ok: $*"; }
for tool in python3 groff nm "$cc"; do
  command -v "$tool" >/dev/null || { echo "FAIL: '$tool' is not installed (groff: apt-get install groff-base)"; exit 1; }
done
[ -f "$lib" ] || { echo "FAIL: no library at $lib"; exit 1; }
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT

# 1. regenerated == committed
if ! python3 "$src/scripts/gen-man" --out "$work/man" 2>"$work/gen.err"; then
  cat "$work/gen.err"; fail "scripts/gen-man failed"
else
  for s in man3 man1; do
    if diff -ru "$man/$s" "$work/man/$s" >"$work/diff.$s"; then
      pass "docs/man/$s is what scripts/gen-man makes of the sources"
    else
      head -40 "$work/diff.$s"
      fail "docs/man/$s differs from the sources: run scripts/gen-man and commit docs/man"
    fi
  done
fi

# 2. exported symbols <-> pages
nm -D --defined-only "$lib" | awk '$2 == "T" || $2 == "D" || $2 == "B" || $2 == "R" { print $3 }' |
  grep '^msgbus_' | sort -u >"$work/syms"
n=$(wc -l <"$work/syms")
[ "$n" -ge 50 ] || fail "only $n msgbus_* symbols exported by $lib (expected the whole API)"
missing=0
while read -r s; do
  [ -f "$man/man3/$s.3" ] || { fail "exported symbol $s has no page docs/man/man3/$s.3"; missing=1; }
done <"$work/syms"
[ $missing = 0 ] && pass "all $n exported symbols have a page"
# names src/msgbus.map exports by name (not by pattern) need a page too,
# and every pattern there must match something the library exports
sed -n '/global:/,/local:/p' "$src/src/msgbus.map" | sed -e 's|/\*.*\*/||g' |
  tr -d ' \t;' | grep -v '^$\|:$' >"$work/map"
[ -s "$work/map" ] || fail "no global: names in src/msgbus.map"
while read -r pat; do
  case $pat in
    *'*'*|*'?'*) grep -q "^${pat//\*/.*}\$" "$work/syms" ||
                   fail "src/msgbus.map pattern $pat matches no exported symbol" ;;
    *) [ -f "$man/man3/$pat.3" ] || fail "src/msgbus.map exports $pat, which has no page" ;;
  esac
done <"$work/map"
stale=0
for p in "$man"/man3/*.3; do
  b=$(basename "$p" .3)
  case $b in msgbus|msgbus_outbox|msgbus_inbox) continue ;; esac
  grep -qx "$b" "$work/syms" || { fail "page $b.3 documents a function the library does not export"; stale=1; }
done
[ $stale = 0 ] && pass "every function page is an exported symbol"
for h in msgbus msgbus_outbox msgbus_inbox; do
  [ -f "$man/man3/$h.3" ] || fail "no header page $h.3"
done
[ -f "$man/man1/msgbus.1" ] || fail "no msgbus.1"

# 3. groff renders each page without a warning
bad=0
for p in "$man"/man3/*.3 "$man"/man1/*.1; do
  out=$(groff -man -Tutf8 -ww -z "$p" 2>&1)
  [ -z "$out" ] || { echo "$out"; fail "groff warns on $(basename "$p")"; bad=1; }
  # pages are pure ASCII (non-ASCII characters are written as \[uXXXX])
  LC_ALL=C grep -qP '[^\x00-\x7F]' "$p" && { fail "$(basename "$p") has non-ASCII bytes"; bad=1; }
done
[ $bad = 0 ] && pass "groff -ww renders every page without a warning"

# 4. the examples compile (-Werror), link against the library and run
#    on mem:// (each exits 0 only when it got what it shows)
nex=0
libdir=$(cd "$(dirname "$lib")" && pwd)
for e in "$man"/examples/*.c; do
  [ -f "$e" ] || continue
  nex=$((nex + 1))
  b=$(basename "$e" .c)
  extra=()
  if grep -q '<sqlite3.h>' "$e"; then
    if [ "${MSGBUS_MAN_SQLITE:-ON}" = OFF ]; then
      # a build without SQLite (MSGBUS_WITH_SQLITE=OFF) refuses the SQLite
      # stores: the example is compiled, not run
      "$cc" -std=c11 -Wall -Wextra -Werror "${cflags[@]}" -I "$src/include" -fsyntax-only "$e" \
        2>"$work/cc.err" || { cat "$work/cc.err"; fail "example $b.c does not compile"; }
      echo "compiled only: example $b.c (this build has no SQLite)"
      continue
    fi
    extra+=(-lsqlite3)
  fi
  if ! "$cc" -std=c11 -Wall -Wextra -Werror "${cflags[@]}" -I "$src/include" "$e" -o "$work/$b" \
       "$libdir/$(basename "$lib")" "${extra[@]}" 2>"$work/cc.err"; then
    cat "$work/cc.err"; fail "example $b.c does not compile"; continue
  fi
  if (cd "$work" && MSGBUS_URL= LD_LIBRARY_PATH="$libdir" timeout 60 "./$b" >"$work/$b.out" 2>&1); then
    pass "example $b.c compiles and runs"
  else
    cat "$work/$b.out"; fail "example $b.c failed when run"
  fi
done
[ "$nex" -gt 0 ] || fail "no example programs in docs/man/examples"
grep -l '^\.SH EXAMPLE' "$man"/man3/*.3 >/dev/null || fail "no page has an EXAMPLE section"
[ $fails = 0 ] && echo "check_man: all checks passed ($n symbols, $nex examples)" && exit 0
echo "check_man: $fails failure(s)"; exit 1
