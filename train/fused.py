"""TensorFlow's fused kernels where Keras 3 runs a chain of whole-tensor ops: Adam's update, batch normalisation.

Keras 3 writes both in backend-neutral ops, each pass over the data a new
tensor; Keras 2 and TensorFlow have single kernels for them. `train` swaps
the kernels in on the model it trains (instance methods, set after the
model is built or loaded): the saved model is Keras's own (same classes,
same variables), so checkpoints load anywhere, evaluate and predict are
untouched, and a resumed run is fused again.

Adam: Keras's step makes g - m, its product with 1 - beta_1, g squared,
its difference with v, sqrt(v) + epsilon and the quotient, each a tensor
the size of the weight: about 200 MB apiece for conv1's 52 M-weight dense
layer, several alive at once. TensorFlow's ResourceApplyAdam does the same
arithmetic in one in-place pass. Keras's m + (g - m)(1 - b1) is
b1 m + (1 - b1) g, its alpha = lr sqrt(1 - b2^t) / (1 - b1^t) is the
kernel's lr_t, and both add epsilon outside the square root. AdamW's weight
decay runs before update_step in Keras and is left as it is.

Batch normalisation, training: Keras computes the moments, then normalises,
scales and shifts in separate ops, and differentiates each; TensorFlow's
FusedBatchNormV3 (oneDNN on x86) does the forward and the backward pass
each in one kernel. The moving statistics are updated as Keras does, with
the biased batch variance (the kernel returns the unbiased one, which is
scaled back). Inference (moving statistics) stays Keras's. Under mixed
bfloat16 the kernel takes and returns bfloat16 tensors (float32 scale,
offset and statistics), where Keras would compute in float32.
tests/test_fused.py compares each with Keras's own.
"""
import types


def _handle(variable):
    """The resource handle of a tf.Variable, or of the tf.Variable inside a Keras variable."""
    return variable.handle if hasattr(variable, "handle") else variable.value.handle


def _fused_update_step(self, gradient, variable, learning_rate):
    import tensorflow as tf

    dtype = variable.dtype
    step = tf.cast(self.iterations + 1, dtype)
    beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
    index = self._get_variable_index(variable)
    tf.raw_ops.ResourceApplyAdam(
        var=_handle(variable), m=_handle(self._momentums[index]), v=_handle(self._velocities[index]),
        beta1_power=tf.pow(beta_1, step), beta2_power=tf.pow(beta_2, step), lr=tf.cast(learning_rate, dtype),
        beta1=beta_1, beta2=beta_2, epsilon=tf.cast(self.epsilon, dtype), grad=tf.cast(gradient, dtype))


def fuse_adam(optimizer):
    """Make a Keras Adam or AdamW (TensorFlow backend) take its steps through ResourceApplyAdam; whether it did.

    Subclasses that keep Adam's own update_step are fused too (train.averaging's
    AveragingAdamW). Left as it is: other optimizers, a subclass with its own
    update step, amsgrad (the kernel has no v_hat), a wrapped optimizer (loss
    scaling) and any backend but TensorFlow's.
    """
    import keras

    if not isinstance(optimizer, keras.optimizers.Adam) or optimizer.amsgrad \
            or type(optimizer).update_step is not keras.optimizers.Adam.update_step:
        return False
    if keras.backend.backend() != "tensorflow":
        return False
    optimizer.update_step = types.MethodType(_fused_update_step, optimizer)
    return True


def _fused_batch_norm_call(self, inputs, training=None, mask=None):
    import tensorflow as tf

    plain = type(self).call
    if not (training and self.trainable) or mask is not None or self.renorm or len(inputs.shape) != 4 \
            or self.axis not in (-1, 3):
        return plain(self, inputs, training=training, mask=mask)
    # bfloat16 goes to the kernel as it is (its statistics and arithmetic are float32 inside): a float32 copy of
    # the input and of its gradient would double the memory traffic that is this layer's whole cost.
    x = inputs if inputs.dtype == tf.bfloat16 else tf.cast(inputs, tf.float32)
    channels = x.shape[-1]
    gamma = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels], tf.float32)
    beta = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels], tf.float32)
    outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
        x, gamma, beta, epsilon=self.epsilon, is_training=True)[:3]
    count = tf.cast(tf.reduce_prod(tf.shape(x)[:3]), tf.float32)
    variance = variance * (count - 1) / tf.maximum(count, 2.0)  # the kernel's Bessel correction undone
    mean, variance = tf.stop_gradient(mean), tf.stop_gradient(variance)
    # train.averaging sets statistics_momentum: statistics averaged over the window of the weights' average.
    momentum = self.statistics_momentum() if hasattr(self, "statistics_momentum") else self.momentum
    self.moving_mean.assign(tf.cast(self.moving_mean, tf.float32) * momentum + mean * (1.0 - momentum))
    self.moving_variance.assign(tf.cast(self.moving_variance, tf.float32) * momentum + variance * (1.0 - momentum))
    return tf.cast(outputs, self.compute_dtype)


def _nested_layers(model):
    """Every layer of a Keras model, those of models nested in it included, through the public `layers`."""
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _nested_layers(layer)


def batch_norm_layers(model):
    """The model's plain (not synchronised) BatchNormalization layers, those of nested models included."""
    import keras

    return [layer for layer in _nested_layers(model)
            if type(layer) is keras.layers.BatchNormalization and not layer.synchronized]


def fuse_batch_norm(model):
    """Make each BatchNormalization layer of a Keras model (TensorFlow backend) train through FusedBatchNormV3.

    Returns the number of layers changed. A layer falls back to Keras's own
    call wherever the kernel does not fit: inference, a frozen layer, a
    mask, renormalisation, other than 4-D channels-last input.
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        return 0
    layers = batch_norm_layers(model)
    for layer in layers:
        layer.call = types.MethodType(_fused_batch_norm_call, layer)
    if layers:
        model.train_function = None  # traced again with the new layers
    return len(layers)


def as_train_runs_it(model, model_name):
    """Swap in what this process's settings turn on (train.tf_env.ProcessSettings) on a compiled model about to fit.

    Adam's fused update, fused batch norm, the step in halves for the
    models in train.models.SPLIT_STEP (train.split_step), and (when
    turned on) the dense kernel updated in blocks for those in
    train.models.DENSE_CHUNKS (train.dense_chunks). `train` calls it
    on a new or resumed model; the benchmarks on the model they time, so
    both run the same step.
    """
    from train.dense_chunks import dense_chunks
    from train.models import DENSE_CHUNKS, SPLIT_STEP
    from train.split_step import split_steps
    from train.tf_env import process_settings

    settings = process_settings()
    if settings.fused_adam:
        fuse_adam(model.optimizer)
    if settings.fused_batch_norm:
        fuse_batch_norm(model)
    if settings.split_steps and model_name in SPLIT_STEP:
        split_steps(model)
    if settings.dense_chunks and model_name in DENSE_CHUNKS:
        dense_chunks(model)
