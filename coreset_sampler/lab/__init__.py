"""The lab: a minimal SR training loop and the demo, kept apart from the library users import.

Nothing in the core package imports from here; ``coreset-sr demo`` and the benchmarks do.
"""
