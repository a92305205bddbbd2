"""``python -m coreset_sampler ...`` is the ``coreset-sr`` command (also what torchrun runs)."""
import sys

from .integrations import drop_working_directory_from_path

# Before the CLI imports torch, numpy, safetensors...: a file of that name in the working directory must not
# run in their place (pip's ``coreset-sr`` script never puts the working directory on sys.path either).
drop_working_directory_from_path()

from .cli import main  # noqa: E402

sys.exit(main())
