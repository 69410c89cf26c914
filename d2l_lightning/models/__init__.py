"""Pure-PyTorch models of the d2l curriculum, a registry, and plain-PyTorch export loading.

Nothing here imports Lightning: an exported model is rebuilt with torch and safetensors alone.
"""

from . import (  # noqa: F401  (register the architectures)
    alexnet,
    attention_classifiers,
    bert,
    densenet,
    generate,
    googlenet,
    gpt,
    lenet,
    linear,
    mamba,
    mlp,
    nin,
    resnet,
    rnn,
    seq2seq,
    transformer,
    vgg,
)
from .export import ExportError, load_exported, read_export_config, save_export
from .preprocess import fit_image, prepare_images, preprocess_images
from .registry import (
    ModelSpec,
    Recipe,
    build_model,
    format_table,
    get_spec,
    model_names,
    register,
)

__all__ = [
    "ExportError",
    "ModelSpec",
    "Recipe",
    "build_model",
    "fit_image",
    "format_table",
    "get_spec",
    "load_exported",
    "model_names",
    "prepare_images",
    "preprocess_images",
    "read_export_config",
    "register",
    "save_export",
]
