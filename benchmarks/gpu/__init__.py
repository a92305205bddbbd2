"""Scripts for a machine with a GPU (run from the repository root, e.g. ``python -m benchmarks.gpu.scoring_gpu``)."""
