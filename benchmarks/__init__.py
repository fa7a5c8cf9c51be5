"""Benchmarks: sdtoolkit against plain-diffusers references of the same work, measured in the same run."""
