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
