"""What is alive at the memory peak of a training step, tensor by tensor.

    python benchmarks/memory_profile.py --models spherenet9,baseline_cnn [--batch 32] [--inter_op 0]

Each model runs one training step (`train_step_bench.make_step`: the training scripts'
step, forward, loss2 + weight decay + orthogonality, gradients, Adam) in a fresh process under the TF profiler, with
TensorFlow's BFC allocator on the CPU.  The allocator reports every allocation and
deallocation (op, shape, address, bytes in use after it), so the step's memory
timeline is exact: this prints the peak above what was held before the step, the op
running at the peak, and the tensors alive at that moment, grouped by the op that made
them, forward activations apart from backward temporaries.  Compared side by side with
the plain twin, the difference is what a SphereNet keeps or allocates beyond it.
`--inter_op 1` fixes the executor's op order; 0 is TensorFlow's default (how users run).
"""

import argparse
import collections
import glob
import json
import os
import subprocess
import sys
import tempfile

MIB = 2.0**20


def _stat_value(stat, stat_metadata):
    for field in ("int64_value", "uint64_value", "double_value", "str_value"):
        if stat.HasField(field):
            return getattr(stat, field)
    if stat.HasField("ref_value"):
        return stat_metadata[stat.ref_value].name
    return None


def allocation_events(xplane_path):
    """[(time_ps, kind, stats)] of the allocator's events in an .xplane.pb, in time order."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    with open(xplane_path, "rb") as f:
        space.ParseFromString(f.read())
    events = []
    for plane in space.planes:
        for line in plane.lines:
            for ev in line.events:
                name = plane.event_metadata[ev.metadata_id].name
                if name not in ("MemoryAllocation", "MemoryDeallocation"):
                    continue
                stats = {plane.stat_metadata[s.metadata_id].name: _stat_value(s, plane.stat_metadata)
                         for s in ev.stats}
                events.append((line.timestamp_ns * 1000 + ev.offset_ps, name, stats))
    events.sort(key=lambda e: e[0])
    return events


def _kind(op):
    """'backward' for ops of the gradient (and the optimizer), else 'forward'."""
    lowered = op.lower()
    if "gradient" in lowered or "adam" in lowered or "assign" in lowered:
        return "backward"
    return "forward"


def peak_report(events):
    """The step's peak and the tensors alive at it, from the allocator's events."""
    live = {}
    first = None
    peak = (-1, None, None)
    for t, name, stats in events:
        in_use = stats.get("bytes_allocated")
        addr = stats.get("addr")
        if first is None and in_use is not None:
            size = stats.get("allocation_bytes") or 0
            first = in_use - size if name == "MemoryAllocation" else in_use + size
        if name == "MemoryAllocation":
            live[addr] = (stats.get("tf_op", "?"), stats.get("shape", "?"),
                          stats.get("allocation_bytes") or 0, stats.get("region_type", ""))
        else:
            live.pop(addr, None)
        if in_use is not None and in_use > peak[0]:
            peak = (in_use, stats.get("tf_op", "?"), dict(live))
    in_use, op, alive = peak
    groups = collections.Counter()
    counts = collections.Counter()
    for tf_op, shape, size, region in alive.values():
        key = (_kind(tf_op), tf_op, shape)
        groups[key] += size
        counts[key] += 1
    return {
        "peak_above_start_mib": (in_use - (first or 0)) / MIB,
        "op_at_peak": op,
        "alive": [
            {"kind": k[0], "op": k[1], "shape": k[2], "count": counts[k], "mib": b / MIB}
            for k, b in groups.most_common()
        ],
    }


def child(name, batch, inter_op):
    """Run in a fresh process: profile one step of `name`, print its peak report as JSON."""
    if inter_op:
        import tensorflow as tf

        tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    import tensorflow as tf

    # A neighbour script, imported by name as the other benchmarks import `common`:
    # Python puts this script's folder first on the import path when it runs the file.
    from train_step_bench import make_step

    run, _ = make_step(name, batch, repeats=1)
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        run()
        tf.profiler.experimental.stop()
        path = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[-1]
        report = peak_report(allocation_events(path))
    report["model"] = name
    print(json.dumps(report))


def profile(name, batch, inter_op):
    env = dict(os.environ, TF_CPU_ALLOCATOR_USE_BFC="true", TF_CPP_MIN_LOG_LEVEL="3")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", name, "--batch", str(batch),
           "--inter_op", str(inter_op)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if not lines:
        raise SystemExit(f"profiling {name} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="spherenet9,baseline_cnn",
                        help="comma-separated models of train_step_bench.MODELS")
    parser.add_argument("--batch", type=int, default=32, help="images per step (default 32)")
    parser.add_argument("--inter_op", type=int, default=0,
                        help="inter-op threads (0 = TensorFlow's default, 1 = a fixed op order)")
    parser.add_argument("--top", type=int, default=12, help="groups of live tensors to list")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.batch, args.inter_op)
    for name in args.models.split(","):
        r = profile(name, args.batch, args.inter_op)
        by_kind = collections.Counter()
        for a in r["alive"]:
            by_kind[a["kind"]] += a["mib"]
        print(f"\n{name}, batch {args.batch}, inter-op {args.inter_op or 'default'}: peak "
              f"{r['peak_above_start_mib']:.1f} MiB above the step's start, at {r['op_at_peak']}; "
              f"alive: forward {by_kind['forward']:.1f} MiB, backward {by_kind['backward']:.1f} MiB")
        for a in r["alive"][:args.top]:
            print(f"  {a['mib']:7.1f} MiB  {a['count']:3d} x {a['shape']:18s} {a['kind']:8s} {a['op']}")


if __name__ == "__main__":
    main()
