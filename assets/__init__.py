"""Embedded assets (teacher weights, evaluator, prompts, layouts), installed as `sdtoolkit.assets`."""
