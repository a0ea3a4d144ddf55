"""A training step taken in two halves of the batch: the same update, about half the activations held at once.

A step keeps every layer's output for the backward pass. For conv2-wide
that is a few 185 MB tensors (128 channels at 92x123, 32 images), most of
the process's peak. Here the step runs the forward and backward pass of
the first half of the batch, then of the second (ordered, so the two are
never in memory together), and applies the size-weighted mean of the two
gradients once: for a loss averaged over the batch, the gradient of the
whole batch's mean. Batches, epochs, checkpoints and history stay in whole
batches; only the arithmetic's order (float rounding) differs.

Only for models without batch statistics: batch normalisation would see
half batches (train.models.SPLIT_STEP names the models it is used for).
A batch of one image is taken whole.
"""
import types


def _unpack(data):
    import keras

    return keras.utils.unpack_x_y_sample_weight(data)


def _part_gradients(model, x, y, sample_weight):
    """(gradients, loss, predictions) of one part of a batch, as Keras's own train_step computes them."""
    import tensorflow as tf

    with tf.GradientTape() as tape:
        y_pred = model(x, training=True)
        loss = model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
        scaled = model.optimizer.scale_loss(loss)
    return tape.gradient(scaled, model.trainable_weights), loss, y_pred


def _halves(model, x, y, sample_weight):
    import tensorflow as tf

    size = tf.shape(x)[0]
    middle = size // 2
    first = _part_gradients(model, x[:middle], y[:middle], None if sample_weight is None else sample_weight[:middle])
    # The second half's forward pass waits for the first half's gradients: its activations are freed by then.
    with tf.control_dependencies([g for g in first[0] if g is not None]):
        rest = [tf.identity(t) for t in (x[middle:], y[middle:])]
        rest_weight = None if sample_weight is None else tf.identity(sample_weight[middle:])
    second = _part_gradients(model, *rest, rest_weight)
    share = tf.cast(middle, tf.float32) / tf.cast(size, tf.float32)
    gradients = [None if a is None else a * tf.cast(share, a.dtype) + b * tf.cast(1 - share, b.dtype)
                 for a, b in zip(first[0], second[0])]
    loss = first[1] * tf.cast(share, first[1].dtype) + second[1] * tf.cast(1 - share, second[1].dtype)
    return gradients, loss, tf.concat([first[2], second[2]], axis=0)


def _loss_mean(model):
    """The Mean that model.fit reports as `loss`: Keras's loss tracker, the compiled model's metric of that name."""
    return next(metric for metric in model.metrics if metric.name == "loss")


def _split_train_step(self, data):
    import tensorflow as tf

    x, y, sample_weight = _unpack(data)
    size = tf.shape(x)[0]
    gradients, loss, y_pred = tf.cond(size > 1, lambda: _halves(self, x, y, sample_weight),
                                      lambda: _part_gradients(self, x, y, sample_weight))
    loss = tf.reshape(loss, [])  # tf.cond can lose the static shapes Keras's trackers read
    y_pred = tf.ensure_shape(y_pred, [None, *self.outputs[0].shape[1:]])
    # The mean over the replicas' losses, as Keras's own step reports it (each replica's loss is scaled down).
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    _loss_mean(self).update_state(loss * tf.cast(replicas, loss.dtype), sample_weight=size)
    self.optimizer.apply_gradients(zip(gradients, self.trainable_weights))
    return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


def split_steps(model):
    """Make a compiled Keras model (TensorFlow backend) take each training step in two halves; whether it did.

    Left as it is: a model with batch normalisation (its statistics would
    be of half batches), one with several inputs or outputs, or any backend
    but TensorFlow's.
    """
    import keras

    if keras.backend.backend() != "tensorflow" or len(model.inputs) != 1 or len(model.outputs) != 1:
        return False
    if any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers):
        return False
    model.train_step = types.MethodType(_split_train_step, model)
    model.train_function = None  # traced again with the new step
    return True
