"""Timing a call: warm-up calls, then timed repeats (``time.perf_counter``)."""

import statistics
import time


def seconds_of(fn):
    """Wall seconds of one ``fn()``."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def repeat_times(fn, warmup, repeats):
    """(seconds of each of ``repeats`` timed calls after ``warmup`` untimed ones, the last result)."""
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return times, result


def best_rate(fn, flops, repeats):
    """GFLOP/s of ``fn`` (``flops`` per call): two warm-up calls, then the best of ``repeats``."""
    fn()
    fn()
    best = min(seconds_of(fn) for _ in range(repeats))
    return flops / best / 1e9


def median_ms(fn, warmup, repeats, monitor, section):
    """Median milliseconds of ``repeats`` calls after ``warmup`` untimed ones; the timed calls are
    one section of the load ``monitor`` (a :class:`benchmarks.cpu_load.LoadMonitor`)."""
    for _ in range(warmup):
        fn()
    times = []
    with monitor.timed(section):
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)
