"""vpt_jax: visual prompt tuning vs full finetuning, in JAX/Flax."""

import pathlib

from setuptools import find_packages, setup

RUNTIME = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "tensorflow-cpu==2.21.0",
    "tensorflow-datasets==4.9.10",
    "ml-collections==1.1.0",
    "clu==0.0.12",
    "tensorboard",
    "scipy",
    "matplotlib",
    "numpy",
    "pillow",
    "safetensors",  # timm / Hugging Face weight files, read into numpy (no torch)
    "importlib_resources",  # tensorflow-datasets 4.9.10 uses it on every Python but declares it only for <3.9
]

# Parity tests only: the PyTorch reference implementations. torch is pinned to the local CPU build;
# an unpinned torch pulls gigabytes of CUDA wheels.
DEV = [
    "pytest",
    "pytest-xdist",
    "ruff==0.17.5",
    "chex",
    "torch==2.13.0",
    "torchvision==0.28.0",
    "timm==1.0.31",
    "pytorch-fid==0.3.0",
    "captum==0.9.0",
    "scikit-learn==1.9.1",  # real handwritten digits for the end-to-end data test
    "nbclient",
    "nbformat",
    "ipykernel",
]

setup(
    name="vpt_jax",
    version="0.1.0",
    description="Visual prompt tuning or full finetuning? The ICLR 2024 study in JAX/Flax, as a tool.",
    long_description=pathlib.Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["vpt_jax", "vpt_jax.*"]),
    include_package_data=True,
    package_data={"vpt_jax": ["assets/*.npz", "assets/*.csv"]},
    install_requires=RUNTIME,
    extras_require={
        "dev": DEV,
        "cuda": ["jax[cuda12]==0.10.2"],
    },
    entry_points={"console_scripts": ["vpt-jax=vpt_jax.main:run"]},
)
