"""Where the time of a SphereConv (or a whole training step) goes, op by op.

    python benchmarks/profile_ops.py layer --layer conv2_1 --norm cosine [--original]
    python benchmarks/profile_ops.py step --model spherenet9 [--batch 32]

Runs the computation as a TF1-style graph with full tracing (RunMetadata step stats)
and prints the total time per op type, summed over several runs.  Complements the
TF profiler (`tf.profiler.experimental`) with a plain-text table.
"""

import argparse
import collections

import common  # noqa: F401  (quiet TF logs)
import numpy as np
import tensorflow as tf


def profile_graph(build, runs=5, inter_op=0, by_node=False):
    graph = tf.Graph()
    with graph.as_default():
        fetch = build()
        init = tf.compat.v1.global_variables_initializer()
    # One inter-op thread runs one op at a time, so op times add up to the step's time
    # (with several, concurrent ops slow each other and the sums overlap).
    config = tf.compat.v1.ConfigProto(inter_op_parallelism_threads=inter_op)
    with tf.compat.v1.Session(graph=graph, config=config) as sess:
        sess.run(init)
        for _ in range(2):
            sess.run(fetch)
        totals = collections.Counter()
        for _ in range(runs):
            meta = tf.compat.v1.RunMetadata()
            opts = tf.compat.v1.RunOptions(trace_level=tf.compat.v1.RunOptions.FULL_TRACE)
            sess.run(fetch, options=opts, run_metadata=meta)
            for dev in meta.step_stats.dev_stats:
                for node in dev.node_stats:
                    op = node.timeline_label.split("(")[0].split(" = ")[-1] if node.timeline_label else node.node_name
                    op = op.strip().split(":")[0] or node.node_name
                    if by_node:
                        op = f"{op} {node.node_name}"
                    totals[op] += (node.all_end_rel_micros) / 1e3
    return totals


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["layer", "step"])
    parser.add_argument("--layer", default="conv2_1")
    parser.add_argument("--norm", default="cosine")
    parser.add_argument("--model", default="spherenet9")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--original", action="store_true")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--by_node", action="store_true",
                        help="one row per graph node (op type and name) instead of per op type")
    parser.add_argument("--inter_op", type=int, default=1,
                        help="inter-op threads (default 1: ops one at a time, times add up; "
                             "0 = TensorFlow's default)")
    args = parser.parse_args()
    tf.compat.v1.disable_eager_execution()
    from layer_bench import SHAPES
    from spherenet_tf import SphereConv2D

    def build_layer():
        size, c_in, c_out, k, pad = SHAPES[args.layer]
        # a variable, not a constant: grappler would fold everything computed from x alone
        x = tf.Variable(np.random.RandomState(0).standard_normal((args.batch, size, size, c_in)),
                        dtype=tf.float32, trainable=False)
        if args.norm == "conv2d":
            import keras

            layer = keras.layers.Conv2D(c_out, k, padding=pad, use_bias=False)
        else:
            layer = SphereConv2D(c_out, k, padding=pad, norm=args.norm,
                                 formulation="original" if args.original else "fast")
        x = tf.identity(x)
        y = layer(x)
        loss = tf.reduce_sum(y * y)
        return tf.gradients(loss, [x] + layer.trainable_weights)

    def build_step():
        from train_step_bench import MODELS
        from spherenet_tf.regularizers import regularization_terms
        from spherenet_tf.losses import loss2_per_example

        model = MODELS[args.model + ("_original" if args.original else "")]()
        rng = np.random.RandomState(0)
        x = tf.Variable(rng.uniform(0, 255, (args.batch, 32, 32, 3)).astype(np.float32), trainable=False)
        y = tf.constant(rng.randint(0, 10, args.batch).astype(np.int32))
        logits = model(x, training=True)
        reg, orth = regularization_terms(model)
        loss = tf.reduce_mean(loss2_per_example(y, logits)) + reg + orth
        return tf.gradients(loss, model.trainable_variables)

    build = build_layer if args.what == "layer" else build_step
    totals = profile_graph(build, args.runs, args.inter_op, args.by_node)
    total = sum(totals.values())
    print(f"{args.what} {args.layer if args.what == 'layer' else args.model} norm={args.norm} "
          f"batch={args.batch}: op time summed over {args.runs} runs = {total:.1f} ms")
    for op, ms in totals.most_common(args.top):
        print(f"  {op:45s} {ms:9.1f} ms  {100 * ms / total:5.1f} %")


if __name__ == "__main__":
    main()
