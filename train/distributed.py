"""Training on several machines with this project's Keras 3 and TensorFlow: what works.

`model.fit` under `tf.distribute.MultiWorkerMirroredStrategy` fails before
its first step (Keras 3.15.1, TensorFlow 2.21.0; keras-team/keras#20585):
Keras's TF trainer reduces the first distributed batch with
`strategy.reduce("MEAN", ...)` to build the model symbolically, and the
collective strategy cannot convert that PerReplica value (docs/training.md
has the error). So `kibble train` has no --workers. What does work is a
plain synchronous loop: `strategy.run` of one gradient step per batch,
Keras's optimizer summing the replicas' gradients with a collective
all-reduce. `fit_replicated` is that loop, fed by make_dataset's worker
split; tests/test_multi_worker.py runs it as two processes on loopback.
"""
import json
import os


def worker_of_tf_config():
    """(worker index, number of workers) from the TF_CONFIG environment variable; (0, 1) without it."""
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    workers = config.get("cluster", {}).get("worker", [])
    return (config.get("task", {}).get("index", 0), len(workers)) if workers else (0, 1)


def fit_replicated(strategy, model, loss, dataset, epochs, initial_epoch=0):
    """Train `model` (built and given an optimizer inside `strategy.scope()`) for `epochs`.

    loss: a Keras loss with reduction None (per example); dataset(epoch,
    worker_index, num_workers): this input pipeline's batches of that epoch,
    e.g. train.pipeline.make_dataset(..., initial_epoch=epoch,
    worker_index=..., num_workers=...); every pipeline must yield the same
    number of batches (make_dataset's split does), or the collective step
    of the one with more waits for ever. Returns the mean training loss of
    each epoch, the same on every worker.
    """
    import tensorflow as tf

    def one_step(images, labels):
        with tf.GradientTape() as tape:
            per_example = loss(labels, model(images, training=True))
            # Mean over the global batch: the replicas' gradients are summed.
            value = tf.nn.compute_average_loss(per_example)
        gradients = tape.gradient(value, model.trainable_variables)
        model.optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return value

    @tf.function
    def step(images, labels):
        values = strategy.run(one_step, args=(images, labels))
        return strategy.reduce("SUM", values, axis=None)

    losses = []
    for epoch in range(initial_epoch, epochs):
        batches = strategy.distribute_datasets_from_function(
            lambda context, epoch=epoch: dataset(epoch, context.input_pipeline_id, context.num_input_pipelines))
        total, count = 0.0, 0
        for images, labels in batches:
            total += float(step(images, labels))
            count += 1
        losses.append(total / max(count, 1))
    return losses
