"""`m1 train`: supervised fine-tuning on m1-format reasoning traces.

Light to import: torch, transformers and TRL load only when training starts.
"""
from m1.training.config import TrainConfig, load_config

__all__ = ["TrainConfig", "load_config"]
