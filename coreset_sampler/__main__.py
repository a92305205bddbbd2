"""``python -m coreset_sampler ...`` is the ``coreset-sr`` command (also what torchrun runs)."""
import sys

from .cli import main

sys.exit(main())
