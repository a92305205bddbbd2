"""Test instrumentation for BasicSR runs in a subprocess: which samples reached the model.

``SOURCE`` is Python source to paste into a runner script (the subprocess cannot import the tests):
it defines ``record_trained_keys(out, entries=None)``, which swaps BasicSR's train prefetcher for one
that appends the GT key of every sample it hands out to ``out`` (and, with ``entries``, writes the
batch's field names there).
"""

SOURCE = '''
def record_trained_keys(out, entries=None):
    """Test instrumentation, not part of any project: the GT key of every sample handed to the model."""
    from pathlib import Path

    import basicsr.train as bt

    class Recording(bt.CPUPrefetcher):
        def next(self):
            batch = super().next()
            if batch is not None:
                with open(out, "a") as f:
                    f.writelines(Path(p).stem + "\\n" for p in batch["gt_path"])
                if entries is not None:
                    Path(entries).write_text(" ".join(sorted(batch)))
            return batch

    bt.CPUPrefetcher = Recording
'''
