"""Distillation trainers, one file per method, installed as `sdtoolkit.trainers`. Importing the package registers
every method with `sdtoolkit.training.register_method`; their names are the `sdtoolkit distill` subcommands."""

# lcm registers `lcm` and `pcm`; dmd2, flash_dmd and sid register `dmd2`, `flash-dmd` and `sid`
from sdtoolkit.trainers import dmd2, flash_dmd, lcm, sid  # noqa: F401
