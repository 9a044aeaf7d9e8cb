"""peftc.tuners: adapters on linear layers (LoRA, SoRA, Hydra, Bone / MiSS) with Hugging Face PEFT's user API,
and EVA initialisation."""
from . import hydra, sora
from .bone_config import BoneConfig, MissConfig
from .configs import config_from_pretrained
from .eva import get_eva_state_dict, initialize_lora_eva_weights
from .eva_config import EvaConfig
from .hydra_config import HydraConfig
from .incremental_pca import IncrementalPCA
from .lora_config import LoraConfig
from .matching import check_target_module_exists, get_pattern_key
from .modules_to_save import ModulesToSaveWrapper
from .peft_model import LoraModel, PeftModel, get_peft_model
from .sora_config import SoraConfig

__all__ = ["BoneConfig", "EvaConfig", "HydraConfig", "IncrementalPCA", "LoraConfig", "LoraModel", "MissConfig",
           "ModulesToSaveWrapper", "PeftModel", "SoraConfig", "check_target_module_exists", "config_from_pretrained",
           "get_eva_state_dict", "get_pattern_key", "get_peft_model", "hydra", "initialize_lora_eva_weights", "sora"]
