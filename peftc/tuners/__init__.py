"""peftc.tuners: adapters on linear layers with Hugging Face PEFT's user API."""
from .eva import get_eva_state_dict, initialize_lora_eva_weights
from .eva_config import EvaConfig
from .incremental_pca import IncrementalPCA
from .lora_config import LoraConfig
from .matching import check_target_module_exists, get_pattern_key
from .modules_to_save import ModulesToSaveWrapper
from .peft_model import LoraModel, PeftModel, get_peft_model

__all__ = ["EvaConfig", "IncrementalPCA", "LoraConfig", "LoraModel", "ModulesToSaveWrapper", "PeftModel",
           "check_target_module_exists", "get_eva_state_dict", "get_pattern_key", "get_peft_model",
           "initialize_lora_eva_weights"]
