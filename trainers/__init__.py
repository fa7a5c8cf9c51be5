"""Distillation trainers, one file per method, installed as `sdtoolkit.trainers`. Importing the package registers
every method with `sdtoolkit.distill.loop.register_method`; their names are the `sdtoolkit distill` subcommands."""

# lcm registers `lcm` and `pcm`; dmd2, flash_dmd, sid and sida register `dmd2`, `flash-dmd`, `sid` and `sida`
from sdtoolkit.trainers import dmd2, flash_dmd, lcm, sid, sida  # noqa: F401
