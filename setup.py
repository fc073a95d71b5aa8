"""recoder-dist: distributed training of collaborative-filtering autoencoders (batch-union sampling)."""
from glob import glob

from setuptools import find_packages, setup

setup(
    name="recoder-dist",
    version="0.1.0",
    description="Spark -> Petastorm -> Horovod -> MLflow pipeline for Recoder-style autoencoders",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.12",
    packages=find_packages(include=["pipeline", "pipeline.*", "recoder_dist", "recoder_dist.*"]),
    package_data={"": ["*.yaml"]},
    data_files=[("share/recoder-dist/jobs", sorted(glob("jobs/*.py"))),
                ("share/recoder-dist/conf", sorted(glob("conf/*")))],
    # torch (==2.13.0 CPU here, any >=2.1 with CUDA elsewhere) and horovod 0.28.1 (built from
    # sdist with PyTorch + gloo) are installed by scripts/setup.sh outside pip's resolver:
    # torch's setuptools wish conflicts with petastorm's and sends the resolver into CUDA builds.
    install_requires=[
        "pyspark>=3.5,<3.6",
        "pyarrow>=10,<15",
        "numpy>=1.24,<2",
        "pandas>=2.0,<3",
        "petastorm==0.13.1",
        "mlflow>=3.17,<3.18",
        "pyyaml>=6,<7",
        "tqdm>=4.66,<5",
        "matplotlib>=3.8,<3.11",
        "psutil>=5.9",
        "omegaconf>=2.3,<2.4",
        "numba>=0.60",
    ],
    extras_require={"dev": ["pytest>=8,<9"]},
    entry_points={"console_scripts": ["recoder-train=recoder_dist.train:main"]},
)
