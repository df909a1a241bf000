"""``python -m kapi_selftests`` is the same CLI as ``kapi-selftests``."""

import sys

from kapi_selftests.cli import main

sys.exit(main())
