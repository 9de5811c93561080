"""Small helpers shared by the benchmark scripts: timing with warm-up and medians,
table printing.  The benchmarks import the installed package (`pip install -e .`)."""

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def median_time(fn, repeats=7, warmup=2, inner=1):
    """Median wall time of `inner` calls of fn over `repeats` repetitions (seconds per call)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - start) / inner)
    return statistics.median(times)


def interleaved_median_times(fns, repeats=7, warmup=2, inner=1):
    """Median times of several functions measured side by side (round-robin), so that
    machine load affects all of them alike.  Returns a list in the order given."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    samples = [[] for _ in fns]
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            samples[k].append((time.perf_counter() - start) / inner)
    return [statistics.median(s) for s in samples]


def print_table(headers, rows):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(str(h).ljust(w) for h, w in zip(headers, widths))
    print(line)
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
