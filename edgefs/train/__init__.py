"""Episodic training and checkpoints (PyTorch, workstation side)."""

from edgefs.train.checkpoint import load_checkpoint, save_checkpoint
from edgefs.train.trainer import TrainConfig, train

__all__ = ["TrainConfig", "load_checkpoint", "save_checkpoint", "train"]
