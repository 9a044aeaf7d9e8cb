"""peftc.tuners: adapters on linear layers with Hugging Face PEFT's user API."""
from .lora_config import LoraConfig
from .matching import check_target_module_exists, get_pattern_key
from .modules_to_save import ModulesToSaveWrapper
from .peft_model import LoraModel, PeftModel, get_peft_model

__all__ = ["LoraConfig", "LoraModel", "ModulesToSaveWrapper", "PeftModel", "check_target_module_exists",
           "get_pattern_key", "get_peft_model"]

# Bone / MiSS and Bat
from .bone_config import BoneConfig, MissConfig  # noqa: E402

__all__ += ["BoneConfig", "MissConfig"]
# SoRA and Hydra adapters
from . import hydra, sora  # noqa: E402
from .configs import config_from_pretrained  # noqa: E402
from .hydra_config import HydraConfig  # noqa: E402
from .sora_config import SoraConfig  # noqa: E402

__all__ += ["HydraConfig", "SoraConfig", "config_from_pretrained", "hydra", "sora"]
