"""One module per command; each declares its options and calls one library function.

Heavy imports (Dask, h5py's readers, TensorFlow) happen inside the command
bodies, so that `--help` stays quick. cli.py adds the commands to the group.
"""
