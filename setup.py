from setuptools import find_packages, setup

setup(
    name="coldint-validator",
    version="0.1.0",
    description="Validator and benchmark harness for the coldint pretraining subnet (netuid 29)",
    python_requires=">=3.10",
    packages=find_packages(include=["constants", "validator", "validator.*", "benchmark", "benchmark.*", "scripts"]),
    package_data={"constants": ["competitions.json"]},  # the live competitions.json (sn29 80b4226), shipped
    install_requires=[
        "torch>=2.3",
        "transformers>=4.45",
        "huggingface_hub>=0.25",
        "tokenizers>=0.19",
        "safetensors>=0.4",
        "pyarrow>=14",
        "numpy>=1.24",
        "pydantic>=2.5",
        "rich>=13",
        "filelock>=3.12",
        "bittensor>=11",
        "olah>=0.5",
        "matplotlib>=3.7",
        "psutil>=5.9",
        "python-dotenv>=1.0",
    ],
    extras_require={
        "test": ["pytest>=8", "hypothesis>=6.100", "pytest-timeout>=2.3", "ray>=2.30"],
        "ray": ["ray>=2.30"],
        "report": ["matplotlib>=3.7"],
        "wandb": ["wandb>=0.17"],
    },
    entry_points={
        "console_scripts": ["coldint-validator=validator.cli.main:main"],
        # commands outside validator/ (which never imports them): found by validator.cli.main at run time
        "coldint_validator.commands": ["benchmark=benchmark.compare:register_benchmark_command"],
    },
)
