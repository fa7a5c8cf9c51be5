"""Distillation machinery shared by every method in `sdtoolkit.trainers`: the one accelerate loop (`loop`), its
configs (`config`), data and text caches (`data`), the method interface and registry (`method`), the
score-distillation core of DMD2, SiD and VSD (`score_distillation`) and the adversarial parts (`adversarial`)."""
