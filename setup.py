import re
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent
VERSION = re.search(r'^__version__ = "([^"]+)"', (HERE / "cli.py").read_text(), re.M).group(1)

# TensorFlow comes through an extra so that CI and laptops without a GPU can
# take the small CPU wheel: `pip install -e .[cpu]`, or `.[gpu]` for CUDA.
setup(
    name="kibble",
    version=VERSION,
    description="Stream image folders into HDF5 shards and train Keras classifiers in bounded memory.",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.13",
    # The stages keep their top-level names (the folders of a clone, `python cli.py` from it); an
    # environment holding another package of one of these names is refused at start-up with an
    # `Error:` line naming it (kibble/packages.py, docs/installing.md).
    packages=["ingest", "shards", "train", "evaluate", "kibble", "kibble.commands"],
    py_modules=["cli"],
    install_requires=[
        "numpy>=1.26,<3",
        "pillow>=10.0,<14",
        "h5py>=3.10,<4",
        "dask>=2024.1",
        "fsspec>=2024.2",  # paths or URLs (shards.storage); already a dependency of Dask
        "distributed>=2024.1",
        "click>=8.1,<9",
        "matplotlib>=3.8,<4",
        "psutil>=5.9",  # memory and CPU figures of a process tree, on every OS
        "tensorboard>=2.16",  # TensorFlow CPU wheels no longer bring it
    ],
    extras_require={
        "cpu": ["tensorflow-cpu>=2.16,<2.22"],
        "gpu": ["tensorflow[and-cuda]>=2.16,<2.22"],
        # scikit-learn (and the SciPy it brings) only checks our hand-written metrics in the tests.
        # Shards in object storage: s3:// and gs:// URLs for --data and ingest --out (fsspec comes with Dask).
        "s3": ["s3fs>=2024.2"],
        "gcs": ["gcsfs>=2024.2"],
        # moto's S3 server (started on loopback by the tests) and s3fs to reach it; pytest-xdist runs `make test`
        # in two processes.
        "test": ["tensorflow-cpu>=2.16,<2.22", "pytest>=7", "pytest-xdist>=3", "scikit-learn>=1.3", "moto[server]>=5",
                 "s3fs>=2024.2"],
    },
    entry_points={"console_scripts": ["kibble=kibble.__main__:main"]},
)
