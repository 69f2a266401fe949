"""The model zoo: the ReSTE paper's architectures and small models for the embedded digits set.

``create(name, **kwargs)`` builds one (and records ``name`` and ``kwargs`` on it:
``zoo_architecture(model)``), ``list_models()`` names them, ``model_info(name)`` says which
input it takes.
"""

from bnnkit.models import digits, resnet_cifar, resnet_imagenet, vgg  # noqa: F401  (register the models)
from bnnkit.models.registry import ModelInfo, create, list_models, model_info, register_model, zoo_architecture

__all__ = ["ModelInfo", "create", "list_models", "model_info", "register_model", "zoo_architecture"]
