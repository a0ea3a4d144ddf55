"""The application layer of kibble: the command line and the tools built on every stage.

    kibble/commands/   one module per command (ingest, train, evaluate, ...)
    kibble/options.py  the click options several commands share
    kibble/group.py    the command group's error handling, TensorFlow's quiet import
    kibble/packages.py the start-up check that `ingest`, `shards`, `train`
                       and `evaluate` are this project's, not a namesake's
    kibble/demo.py     the whole pipeline on a small data set
    kibble/info.py     an inventory of shards and runs
    kibble/predict.py  inference on image files

It sits above every stage (shards <- ingest <- train <- evaluate <- kibble <-
cli.py): it may import any of them, and none of them imports it. This file
imports nothing, so that `kibble.packages` can run before any stage is loaded.
"""
