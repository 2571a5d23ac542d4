"""Benchmarks of HYDRA Studio: `python -m bench` (see bench/__main__.py); gpu_check.py and soak.py are scripts."""
