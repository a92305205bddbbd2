"""Benchmark and reproduction scripts, run as modules from the repository root.

    python -m benchmarks.sweep --preset cpu          # the reproduction sweep
    python -m benchmarks.bench_selection             # selection / sampler timings

Not part of the installed library; results land under ``benchmarks/results/``.
"""
