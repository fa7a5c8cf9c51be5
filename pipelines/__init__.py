"""Diffusers pipelines and export of trained students, installed as `sdtoolkit.pipelines`."""
