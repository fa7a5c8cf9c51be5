"""sdtoolkit: diffusion distillation and 3D score distillation on one shared Denoiser.

Where things are (README, "Architecture"):

- `sdtoolkit.core`: the Denoiser and what it owns: schedules, prediction types, classifier-free guidance (`cfg`),
  attention kernels, EMA, LoRA adapter switching, offload.
- `sdtoolkit.models`: loading teachers (`builtin:` names, folders, hub ids), text encoders, the embedded teachers
  and their training.
- `sdtoolkit.distill`: the one training loop, its configs, data and text caches, the method interface and registry,
  the score-distillation core (DMD2, SiD, VSD) and the adversarial parts. Methods live in `sdtoolkit.trainers`.
- `sdtoolkit.text_to_3d`: 3D guidances (SDS, VSD, SemanticSDS), the text-to-3D trainer, mesh export, 3D evaluation;
  `sdtoolkit.nerf`: the radiance-field representations.
- `sdtoolkit.data`: the procedural shapes world; `sdtoolkit.eval`: the evaluator; `sdtoolkit.cli`: the commands.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

__version__ = "0.1.0"

MOVED_MODULES = {
    "sdtoolkit.denoiser": "sdtoolkit.core.denoiser",
    "sdtoolkit.schedules": "sdtoolkit.core.schedules",
    "sdtoolkit.prediction": "sdtoolkit.core.prediction",
    "sdtoolkit.guidance": "sdtoolkit.core.cfg",
    "sdtoolkit.attention": "sdtoolkit.core.attention",
    "sdtoolkit.ema": "sdtoolkit.core.ema",
    "sdtoolkit.adapters": "sdtoolkit.core.adapters",
    "sdtoolkit.offload": "sdtoolkit.core.offload",
    "sdtoolkit.utils": "sdtoolkit.core.utils",
    "sdtoolkit.loading": "sdtoolkit.models.loading",
    "sdtoolkit.text": "sdtoolkit.models.text",
    "sdtoolkit.shapes_teacher": "sdtoolkit.models.shapes_teacher",
    "sdtoolkit.shapes_teacher_train": "sdtoolkit.models.shapes_teacher_train",
    "sdtoolkit.shapes_teacher_card": "sdtoolkit.models.shapes_teacher_card",
    "sdtoolkit.training": "sdtoolkit.distill.loop",
    "sdtoolkit.training_config": "sdtoolkit.distill.config",
    "sdtoolkit.training_data": "sdtoolkit.distill.data",
    "sdtoolkit.score_distillation": "sdtoolkit.distill.score_distillation",
    "sdtoolkit.adversarial": "sdtoolkit.distill.adversarial",
    "sdtoolkit.guidance3d": "sdtoolkit.text_to_3d.guidance",
}
"""Modules of sdtoolkit 0.1's flat layout and their new homes. Importing an old name still works, with a
`FutureWarning` naming the new one; the old names will be removed in 0.3."""


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves an old module name (and its submodules) as the module at its new home, warning once per import."""

    def find_spec(self, fullname, path=None, target=None):
        new = _new_name(fullname)
        if new is None:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        new = _new_name(spec.name)
        warnings.warn(
            f"`{spec.name}` moved to `{new}`; import it from there (the old name goes away in sdtoolkit 0.3)",
            FutureWarning,
            stacklevel=2,
        )
        return importlib.import_module(new)

    def exec_module(self, module):
        pass


def _new_name(fullname: str) -> str | None:
    for old, new in MOVED_MODULES.items():
        if fullname == old or fullname.startswith(old + "."):
            return new + fullname[len(old) :]
    return None


if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModuleFinder())
