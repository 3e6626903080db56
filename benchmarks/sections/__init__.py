"""The sections of ``python -m benchmarks.suite``, one module each: it measures its part and
renders its Markdown. ``models`` exports what the others time."""
