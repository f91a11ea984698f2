from setuptools import find_packages, setup

setup(
    name="jigsaw_ds",
    version="0.1.0",
    description="Train WeatherMixer with Jigsaw (domain x tensor) parallelism on DeepSpeed and Megatron-core",
    packages=find_packages(include=["jigsaw_ds", "jigsaw_ds.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",          # keep the CPU build on CPU machines: install with -c constraints.txt
        "deepspeed==0.19.8",
        "megatron-core==0.16.1",
        "xarray",
        "zarr>=3",
        "tensorstore",        # the training read path (data/store.py: read_into)
        "tensorboard",
        "numpy",
        "pandas",
        "tqdm",
        "dask[distributed]",  # jigsaw-data prepare's parallel, resumable job
    ],
    extras_require={
        "test": ["pytest"],
        "readers": ["h5netcdf", "netCDF4", "cfgrib"],
        "plots": ["matplotlib"],
        "bench": ["crc32c"],   # bench/io.py's decode floor checks crc32c as the reader does (hardware crc32c)
        "pe": ["dinosaur-dycore"],  # `jigsaw-data held-suarez`: NeuralGCM's dynamical core, on jax (CPU)
        # `jigsaw-data swe` needs torch-harmonics, whose metadata pins a newer torch: it is installed with
        # --no-deps (scripts/install.sh does; by hand: pip install --no-deps torch-harmonics==0.9.3).
    },
    entry_points={"console_scripts": [
        "jigsaw-train=jigsaw_ds.train.cli:main",
        "jigsaw-data=jigsaw_ds.data.cli:main",
        "jigsaw-ckpt=jigsaw_ds.checkpoint.cli:main",
        "jigsaw-eval=jigsaw_ds.eval.cli:main",
        "jigsaw-forecast=jigsaw_ds.eval.cli:forecast_main",
        "jigsaw-plan=jigsaw_ds.perf.plan:main",
    ]},
)
