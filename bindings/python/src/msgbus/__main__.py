"""``python -m msgbus``: says which libmsgbus.so the binding loads, or why none."""
import sys

from . import LibraryNotFoundError, library_info

try:
    print(library_info())
except LibraryNotFoundError as e:
    print(e, file=sys.stderr)
    sys.exit(1)
