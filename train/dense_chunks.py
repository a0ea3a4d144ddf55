"""A training step that updates the largest dense layer's weights in chunks of rows: their gradient is never whole.

conv1's dense layer holds 52 M weights (67,344 x 768). A plain step makes
their gradient (207 MB) and Adam updates the weights from it; with the
weights and Adam's two slots (621 MB), TensorFlow's ~450 MB and the
activations, the step peaked at 1.4-1.6 GB. Here the gradient of that
layer's kernel is made one block of rows at a time, from the layer's input
and the gradient of its output (the kernel's gradient is their outer
product, x^T dz), and Adam steps that block of the weights and of its two
slots before the next block is made.

The arithmetic is TensorFlow's ResourceApplyAdam's (train.fused), written
out per block: m += (g - m)(1 - beta_1), v += (g^2 - v)(1 - beta_2),
w -= lr_t m / (sqrt(v) + epsilon), lr_t = lr sqrt(1 - beta_2^t) /
(1 - beta_1^t). Every other weight steps through the optimizer as before,
after the blocks (so its step count is the blocks' too).

In place, without copies of the whole tensors: a block is read as a slice
of the variable's buffer and written back with a scatter of its rows. A
scatter puts the variable in TensorFlow's copy-on-read mode (every later
read would copy all 207 MB); it is turned off again after each block,
which is allowed once nothing else holds the buffer. The blocks run one
after the other, after the backward pass is done with the kernel.

The weights and slots after each step equal the fused step's to the bit
(tests/test_dense_chunks.py). Only for a model whose largest Dense layer
has a ReLU or no activation, trained by plain Adam (not AMSGrad, not
AdamW) in float32 on one replica; the checkpoints are the same model and
optimizer as before (train.models.DENSE_CHUNKS names the models).

Off by default (train.tf_env.ProcessSettings.dense_chunks), measured on
conv1 (docs/benchmarks.md): the step's peak fell ~300 MB, but the
process's peak only from 1,543 to 1,424 MB, now at the checkpoint (Keras
copies each weight twice to write it), and the step took twice as long:
its block-sized temporaries come from fresh pages of malloc each time.
TensorFlow's tensor pool makes it as fast as before, and holds ~1,250 MB.
"""
import functools
import types

from train.fused import _handle

# Bytes per block at most: conv1's 67,344 x 768 kernel goes in 25 blocks of 2,693-2,694 rows (8.3 MB), few enough
# that their overhead stays small.
BLOCK_BYTES = 8 * 2 ** 20


def _largest_dense(model):
    import keras

    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    return max(dense, key=lambda layer: layer.kernel.shape[0] * layer.kernel.shape[1], default=None)


def _blocks(rows, cols, itemsize=4):
    per_block = max(1, BLOCK_BYTES // (cols * itemsize))
    count = -(-rows // per_block)
    return [(rows * i // count, rows * (i + 1) // count) for i in range(count)]


def _adam_blocks(optimizer, kernel, inputs, output_gradient, after):
    """Adam's step of `kernel` block by block, from the layer's inputs and its output's gradient; the last ops."""
    import tensorflow as tf

    dtype = tf.float32
    index = optimizer._get_variable_index(kernel)
    handles = [_handle(v) for v in (optimizer._momentums[index], optimizer._velocities[index], kernel)]
    step = tf.cast(optimizer.iterations + 1, dtype)
    beta_1, beta_2 = tf.cast(optimizer.beta_1, dtype), tf.cast(optimizer.beta_2, dtype)
    epsilon = tf.cast(optimizer.epsilon, dtype)
    lr = tf.cast(optimizer.learning_rate, dtype) * tf.sqrt(1 - tf.pow(beta_2, step)) / (1 - tf.pow(beta_1, step))
    inputs_t = tf.transpose(tf.cast(inputs, dtype))
    output_gradient = tf.cast(output_gradient, dtype)
    rows, cols = kernel.shape
    done = after
    for start, end in _blocks(rows, cols):
        with tf.control_dependencies(done):
            gradient = tf.matmul(inputs_t[start:end], output_gradient)
            m, v, w = [tf.raw_ops.ReadVariableOp(resource=h, dtype=dtype)[start:end] for h in handles]
            m = m + (gradient - m) * (1 - beta_1)
            v = v + (tf.square(gradient) - v) * (1 - beta_2)
            w = w - m * lr / (tf.sqrt(v) + epsilon)
            rows_here = tf.range(start, end)
            written = [tf.raw_ops.ResourceScatterUpdate(resource=h, indices=rows_here, updates=value)
                       for h, value in zip(handles, (m, v, w))]
        with tf.control_dependencies(written):
            done = [tf.raw_ops.DisableCopyOnRead(resource=h) for h in handles]
    return done


def _dense_chunks_train_step(self, data, view, dense, others):
    import keras
    import tensorflow as tf

    from train.split_step import _loss_mean

    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    with tf.GradientTape() as tape:
        inputs, outputs, y_pred = view(x, training=True)
        loss = self.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
        scaled = self.optimizer.scale_loss(loss)
    # The kernel is not asked for: its gradient op is left out of the traced step.
    *gradients, output_gradient = tape.gradient(scaled, others + [outputs])
    if dense.activation is keras.activations.relu:
        output_gradient = tf.raw_ops.ReluGrad(gradients=output_gradient, features=outputs)
    # The backward pass is done with the kernel (its read is freed) before the blocks write to it.
    done = _adam_blocks(self.optimizer, dense.kernel, inputs, output_gradient,
                        after=[g for g in gradients if g is not None])
    with tf.control_dependencies(done):
        self.optimizer.apply_gradients(zip(gradients, others))
    _loss_mean(self).update_state(loss, sample_weight=tf.shape(x)[0])
    return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


def dense_chunks(model):
    """Make a compiled Keras model (TensorFlow backend) update its largest Dense kernel in blocks; whether it did."""
    import keras
    import tensorflow as tf

    optimizer = model.optimizer
    dense = _largest_dense(model)
    if keras.backend.backend() != "tensorflow" or dense is None or len(model.inputs) != 1 \
            or len(model.outputs) != 1 or type(optimizer) is not keras.optimizers.Adam or optimizer.amsgrad \
            or dense.activation not in (keras.activations.relu, keras.activations.linear) \
            or dense.kernel.dtype != "float32" or tf.distribute.get_strategy().num_replicas_in_sync != 1:
        return False
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    others = [w for w in model.trainable_weights if w is not dense.kernel]
    view = keras.Model(model.inputs, [dense.input, dense.output, model.outputs[0]])
    # Bound here, not set on the model: Keras would track them as the model's own layers and weights.
    model.train_step = types.MethodType(functools.partial(_dense_chunks_train_step, view=view, dense=dense,
                                                          others=others), model)
    model.train_function = None  # traced again with the new step
    return True
