"""``python -m aioiam``: the same as the ``aioiam`` console script."""

import sys

from ._cli import main

sys.exit(main())
