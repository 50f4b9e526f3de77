"""The scripts behind BENCHMARKS.md, a package so that they import each other as ``bench.X``.

Run them from the repository root as modules: ``python -m bench.suite``, ``python -m
bench.decode_gpu --device cpu --small``, ... (``bash bench/gpu_check.sh`` does).  Not shipped
with tformer (pyproject's packages); bench/common.py holds what several of them share.
"""
