"""Distillation trainers, one file per method, installed as `sdtoolkit.trainers`."""
