"""Import TensorFlow without its start-up noise unless the user asked for it."""
import contextlib
import os
import sys


def import_tensorflow(verbose=False):
    """Import and return tensorflow; hide C++ start-up logs unless `verbose`.

    TF_CPP_MIN_LOG_LEVEL does not cover the lines absl prints before its
    logging is initialised, so stderr's file descriptor is pointed at
    /dev/null for the duration of the import.
    """
    if verbose or "tensorflow" in sys.modules:
        import tensorflow
        return tensorflow
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import tensorflow
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    with contextlib.suppress(Exception):
        tensorflow.get_logger().setLevel("ERROR")
    return tensorflow
