"""Where the unit tests' recorded data lives: ``tests/data`` of this checkout.

Tests read recorded files only from here, never from a path outside the checkout,
so that a clone tests on its own. A missing file is an error (the test fails),
never a skip.
"""

from __future__ import annotations

from pathlib import Path

#: recorded traces, console logs, format files, gate runs
DATA = Path(__file__).resolve().parents[1] / "data"
#: real captures from a KAPI v4 kernel (see ``kapi-reference/README.md`` there)
REFERENCE = DATA / "kapi-reference"
