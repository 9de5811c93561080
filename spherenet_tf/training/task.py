"""The task of a run: model, optimiser, data and the compiled train and eval steps.

The step of the original training scripts (wy1iu/SphereNet `train_spherenet.py`):
loss = loss2 + weight decay + orthogonality constraints, one Adam step, and the
training batch's fit / reg / orth / accuracy; the test accuracy over the whole test
set.  Here each step runs under a tf.distribute strategy (`strategy.run` of a replica
step inside a `tf.function`: Keras 3's `fit` fails under MultiWorkerMirroredStrategy,
keras-team/keras#20585) and computes what the original's single device computed: the
mean over the global batch, BatchNorm statistics over the global batch.
"""

import math

import keras
import tensorflow as tf

from .. import cifar10_input
from ..checks import InputError, check_dataset
from ..ga_softmax import margin_forward
from ..losses import loss2_per_example
from ..regularizers import has_orthogonality, regularization_terms
from .distribution import choose_precision
from .errors import TrainingError
from .nonfinite import nonfinite_flag, nonfinite_source
from .schedule import OriginalSchedule, original_adam


def count_correct(logits, labels):
    """Number of rows whose largest logit is at the label (float32 scalar)."""
    predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
    return tf.reduce_sum(tf.cast(tf.equal(predictions, tf.cast(labels, tf.int32)), tf.float32))


def make_eval_step(model, strategy):
    """The compiled eval step of `model` under `strategy`: (images, labels) -> (correct,
    count), each summed over the replicas (eval-mode BatchNorm)."""

    def replica_eval(images, labels):
        logits = model(images, training=False)
        return count_correct(logits, labels), tf.cast(tf.shape(labels)[0], tf.float32)

    @tf.function
    def eval_step(images, labels):
        correct, count = strategy.run(replica_eval, args=(images, labels))
        sum_ = tf.distribute.ReduceOp.SUM
        return strategy.reduce(sum_, correct, axis=None), strategy.reduce(sum_, count, axis=None)

    return eval_step


def accuracy_over(eval_step, batches):
    """The evaluation loop (of a run's test line and of `--eval_only`): the fraction of
    the images of `batches` whose argmax logit is the label."""
    correct = total = 0.0
    for images, labels in batches:
        c, n = eval_step(images, labels)
        correct += float(c)
        total += float(n)
    return correct / max(total, 1.0)


def evaluate_accuracy(model, images, labels, batch_size):
    """Accuracy of `model` on the test arrays in batches of `batch_size`, on one device
    (the default strategy): `accuracy_over` of `make_eval_step`."""
    eval_step = make_eval_step(model, tf.distribute.get_strategy())
    return accuracy_over(eval_step, cifar10_input.test_dataset(images, labels, batch_size))


class ClassificationTask:
    """Builds what a run trains and evaluates, under `strategy`.

    Args:
      settings: a `Settings`.
      build_model: `settings -> keras.Model` (called inside the strategy's scope).
      strategy: the tf.distribute strategy.
      data: optional ((train_x, train_y), (test_x, test_y)) arrays; read from
        `settings.data_path` when omitted.
    """

    def __init__(self, settings, build_model, strategy, data=None):
        self.s = s = settings
        self.strategy = strategy
        self.n_replicas = strategy.num_replicas_in_sync
        self.precision_policy, self.precision_reason = choose_precision(s.mixed_precision)
        self._check_policy()
        self._check_divisible()
        if data is None:
            data = cifar10_input.load_dataset(s.data_path, s.dataset, download=s.download)
        with strategy.scope():
            self.model = build_model(s)
            if self.n_replicas > 1 and not s.bn_per_replica:
                for layer in self.model.layers:
                    if isinstance(layer, keras.layers.BatchNormalization):
                        layer.synchronized = True
            self.schedule = OriginalSchedule(s.lr)
            self.optimizer = original_adam(self.schedule, self.loss_scaled)
            self.optimizer.build(self.model.trainable_variables)
            # [iteration of the first non-finite step or -1, number of such steps]
            # and [fit, reg, orth] of the first one (see `train_step`).
            self._nonfinite = tf.Variable([-1, 0], dtype=tf.int64, trainable=False)
            self._nonfinite_values = tf.Variable([0.0, 0.0, 0.0], trainable=False)
        try:
            data = check_dataset(data, s.n_class, self.model.input_shape[1:], s.batch_sz)
        except InputError as e:
            raise TrainingError(str(e)) from None
        (self.train_x, self.train_y), (self.test_x, self.test_y) = data
        self.has_orth = has_orthogonality(self.model)
        self.train_step = self._build_train_step()
        self._eval_step = make_eval_step(self.model, strategy)

    @property
    def loss_scaled(self):
        return self.precision_policy == "mixed_float16"

    @property
    def iteration(self):
        """Index of the next iteration to run (= Adam steps applied so far)."""
        return int(self.optimizer.iterations.numpy())

    def _check_policy(self):
        """The model is built under Keras's global dtype policy, which the command-line
        entry point sets (`set_process_state`), not this constructor: it must be the one
        the settings ask for (the loss scaling and the run's record follow them)."""
        current = keras.config.dtype_policy().name
        if current != self.precision_policy:
            raise TrainingError(
                f"the settings ask for the dtype policy {self.precision_policy} "
                f"({self.precision_reason}) but Keras's global policy is {current}. The policy "
                "is the process's: call spherenet_tf.training.set_process_state(settings) "
                "before building the run (the training scripts' entry point does), or set "
                "keras.mixed_precision.set_global_policy yourself."
            )

    def _check_divisible(self):
        for name in ("batch_sz", "batch_test"):
            value = getattr(self.s, name)
            if value % self.n_replicas:
                raise TrainingError(
                    f"{name}={value} is not divisible by the {self.n_replicas} replicas of the "
                    f"{type(self.strategy).__name__}: every replica must get the same share of "
                    f"the batch. Use a multiple of {self.n_replicas} (e.g. --{name} "
                    f"{value // self.n_replicas * self.n_replicas or self.n_replicas}) or fewer devices."
                )

    # -- the steps -------------------------------------------------------------
    def _forward_fn(self):
        """(images, labels) -> (logits, the logits the loss is computed on)."""
        if self.s.loss == "ga_softmax":  # beyond the original: the loss on margin logits
            try:
                return margin_forward(self.model, self.s.margin)
            except ValueError as e:
                raise TrainingError(str(e)) from None
        model = self.model

        def forward(images, labels):
            logits = model(images, training=True)
            return logits, logits

        return forward

    def _build_train_step(self):
        s, strategy, model, optimizer = self.s, self.strategy, self.model, self.optimizer
        variables = model.trainable_variables
        forward, loss_scaled, n_replicas = self._forward_fn(), self.loss_scaled, self.n_replicas

        def replica_step(images, labels):
            with tf.GradientTape() as tape:
                logits, fit_logits = forward(images, labels)
                per_example = loss2_per_example(labels, fit_logits, s.n_class)
                # This replica's share of the batch mean, so that the all-reduced (summed)
                # gradients are those of the original's mean over the global batch.
                fit = tf.reduce_sum(per_example) / s.batch_sz
                reg, orth = regularization_terms(model)
                loss = fit + (reg + orth) / n_replicas
                if loss_scaled:
                    loss = optimizer.scale_loss(loss)
            grads = tape.gradient(loss, variables)
            bad = nonfinite_flag(fit, reg, orth, grads, loss_scaled)
            return fit, reg, orth, count_correct(logits, labels), grads, bad

        if s.jit_compile:
            replica_step = tf.function(replica_step, jit_compile=True)
        nonfinite, nonfinite_values = self._nonfinite, self._nonfinite_values

        @tf.function
        def train_step(iterator):
            """One iteration: returns the global batch's (fit, reg, orth, accuracy)."""
            images, labels = next(iterator)
            fit, reg, orth, correct, grads, bad = strategy.run(replica_step, args=(images, labels))
            sum_, mean = tf.distribute.ReduceOp.SUM, tf.distribute.ReduceOp.MEAN
            fit, reg, orth = (strategy.reduce(sum_, fit, axis=None), strategy.reduce(mean, reg, axis=None),
                              strategy.reduce(mean, orth, axis=None))
            # A step whose loss (or, in float32, gradient) is NaN/Inf on any replica is not
            # applied: the weights stay those of the last good iteration, for the
            # diagnosis and the checkpoints; the loop stops at its next check.
            ok = tf.equal(strategy.reduce(sum_, bad, axis=None), 0.0)

            def apply():
                strategy.run(lambda g: optimizer.apply_gradients(zip(g, variables)), args=(grads,))
                return tf.constant(True)

            def record():
                first = tf.where(nonfinite[0] < 0, optimizer.iterations, nonfinite[0])
                nonfinite.assign(tf.stack([first, nonfinite[1] + 1]))
                nonfinite_values.assign(tf.where(nonfinite[1] == 1, tf.stack([fit, reg, orth]),
                                                 nonfinite_values))
                return tf.constant(False)

            tf.cond(ok, apply, record)
            return fit, reg, orth, strategy.reduce(sum_, correct, axis=None) / s.batch_sz

        return train_step

    # -- the data --------------------------------------------------------------
    def train_iterator(self, start_iteration):
        """The global batches of iterations start_iteration, start_iteration + 1, ...,
        split over the replicas."""
        s = self.s

        def dataset_fn(ctx):
            per_replica = ctx.get_per_replica_batch_size(s.batch_sz)
            ds = cifar10_input.train_dataset(
                self.train_x, self.train_y, s.batch_sz, seed=s.seed,
                start_iteration=start_iteration, augmentation=s.augmentation,
                shard=(ctx.input_pipeline_id, ctx.num_input_pipelines),
            )
            return ds if per_replica == s.batch_sz // ctx.num_input_pipelines else ds.rebatch(per_replica)

        return iter(self.strategy.distribute_datasets_from_function(dataset_fn))

    def _test_dataset(self):
        s = self.s

        def dataset_fn(ctx):
            per_replica = ctx.get_per_replica_batch_size(s.batch_test)
            ds = cifar10_input.test_dataset(self.test_x, self.test_y, s.batch_test,
                                            shard=(ctx.input_pipeline_id, ctx.num_input_pipelines))
            return ds if per_replica == s.batch_test // ctx.num_input_pipelines else ds.rebatch(per_replica)

        return self.strategy.distribute_datasets_from_function(dataset_fn)

    def evaluate(self):
        """Accuracy over the whole test set (the original's `test acc`)."""
        return accuracy_over(self._eval_step, self._test_dataset())

    # -- NaN / Inf -------------------------------------------------------------
    def nonfinite_report(self):
        """None, or what went non-finite since the start, where, and what was skipped."""
        first, count = (int(v) for v in self._nonfinite.numpy())
        if first < 0:
            return None
        fit, reg, orth = (float(v) for v in self._nonfinite_values.numpy())
        images = None
        try:
            images, _ = next(iter(cifar10_input.train_dataset(
                self.train_x, self.train_y, self.s.batch_sz, seed=self.s.seed,
                start_iteration=first, augmentation=self.s.augmentation)))
        except Exception:  # noqa: BLE001 - the diagnosis must not hide the error itself
            pass
        concerned = nonfinite_source(self.model, fit, reg, orth, images)
        what = ("the loss became" if not all(map(math.isfinite, (fit, reg, orth))) else
                "a gradient became")
        return (f"{what} non-finite at iteration {first} (fit={fit:.6g}, reg={reg:.6g}, "
                f"orth={orth:.6g}); first layer concerned: {concerned}. That step "
                + (f"and {count - 1} later non-finite one(s) were" if count > 1 else "was")
                + " not applied")
