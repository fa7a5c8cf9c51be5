"""Distillation trainers, one file per method, installed as `sdtoolkit.trainers`. Importing the package registers
every method with `sdtoolkit.distill.loop.register_method`; their names are the `sdtoolkit distill` subcommands."""

# one file per method; importing registers `lcm`, `pcm`, `dmd2`, `flash-dmd`, `scm`, `ladd`, `sid`, `sida`, `mcm`
# and `prepare-teacher`
from sdtoolkit.trainers import dmd2, flash_dmd, ladd, lcm, mcm, pcm, scm, sid, sida, teacher_prep  # noqa: F401
