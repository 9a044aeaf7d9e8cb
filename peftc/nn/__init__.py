"""peftc.nn: layers with explicit forward and backward."""
from .linear import Linear
from .lora import LoraAdapter, LoraLinear
from .module import Module, ModuleList, Parameter

__all__ = ["Linear", "LoraAdapter", "LoraLinear", "Module", "ModuleList", "Parameter"]

# CNN layers
from .activation import ReLU  # noqa: E402
from .batchnorm import BatchNorm2d  # noqa: E402
from .conv import Conv2d  # noqa: E402
from .pool import AvgPool2d, GlobalAvgPool2d, MaxPool2d  # noqa: E402

__all__ += ["AvgPool2d", "BatchNorm2d", "Conv2d", "GlobalAvgPool2d", "MaxPool2d", "ReLU"]

# losses
from .loss import CrossEntropyLoss  # noqa: E402

__all__ += ["CrossEntropyLoss"]
# transformer encoder modules
from .activation import GELU  # noqa: E402
from .attention import SelfAttention  # noqa: E402
from .dropout import Dropout  # noqa: E402
from .embedding import BertEmbeddings, Embedding  # noqa: E402
from .layernorm import LayerNorm  # noqa: E402
from .sentence_pool import MeanPooling  # noqa: E402

__all__ += ["BertEmbeddings", "Dropout", "Embedding", "GELU", "LayerNorm", "MeanPooling", "SelfAttention"]

# Bone / MiSS and Bat
from .bone import BoneLinear  # noqa: E402

__all__ += ["BoneLinear"]

# SoRA and Hydra adapters
from .hydra import HydraLinear  # noqa: E402
from .sora import SoraLinear  # noqa: E402

__all__ += ["HydraLinear", "SoraLinear"]

# fused batch norm + ReLU (eata-speed)
from .batchnorm_relu import BatchNormReLU2d  # noqa: E402

__all__ += ["BatchNormReLU2d"]

# GPT-2's transposed linear layer
from .conv1d import Conv1D  # noqa: E402

__all__ += ["Conv1D"]
