"""TensorFlow's environment: the one place that quiets its logs and imports it."""
import contextlib
import os
import sys

# TensorFlow's C++ log threshold, read once when it is imported: 3 hides INFO, WARNING and ERROR lines.
LOG_LEVEL_ENV = "TF_CPP_MIN_LOG_LEVEL"


def quiet_logs(verbose=False):
    """Hide TensorFlow's C++ start-up logs in this process and the ones it starts, unless `verbose`.

    Call it before anything imports TensorFlow (the variable is read then);
    a value the user set in the environment is kept.
    """
    if not verbose:
        os.environ.setdefault(LOG_LEVEL_ENV, "3")


def import_tensorflow(verbose=False):
    """Import and return tensorflow; hide C++ start-up logs unless `verbose`.

    TF_CPP_MIN_LOG_LEVEL does not cover the lines absl prints before its
    logging is initialised, so stderr's file descriptor is pointed at
    /dev/null for the duration of the import.
    """
    if verbose or "tensorflow" in sys.modules:
        import tensorflow
        return tensorflow
    quiet_logs(verbose)
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
