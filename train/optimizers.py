"""Adam's update as one fused, in-place TensorFlow kernel instead of Keras's chain of whole-tensor ops.

Keras 3 writes Adam's step as separate ops: g - m, its product with
1 - beta_1, g squared, its difference with v, sqrt(v) + epsilon, the
quotient, each a new tensor the size of the weight. For conv1's 52 M-weight
dense layer that is about 200 MB per temporary, and a few of them are alive
at once on top of the weights, both slots and the gradient: the optimizer
step set conv1's peak memory. TensorFlow's ResourceApplyAdam does the same
arithmetic in one pass over the buffers it updates in place.

Same arithmetic: Keras's m + (g - m)(1 - b1) is b1 m + (1 - b1) g, its
alpha = lr sqrt(1 - b2^t) / (1 - b1^t) is the kernel's lr_t, and both add
epsilon outside the square root (tests/test_optimizers.py compares the two
over a few steps). AdamW's weight decay runs before update_step in Keras
and is left as it is. The saved optimizer is Keras's own Adam or AdamW
(same class, same slot variables), so checkpoints load anywhere and a
resumed run is fused again by train.
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

    Left as it is: other optimizers, amsgrad (the kernel has no v_hat), a
    wrapped optimizer (loss scaling) and any backend but TensorFlow's.
    """
    import keras

    if type(optimizer) not in (keras.optimizers.Adam, keras.optimizers.AdamW) or optimizer.amsgrad:
        return False
    if keras.backend.backend() != "tensorflow":
        return False
    optimizer.update_step = types.MethodType(_fused_update_step, optimizer)
    return True
