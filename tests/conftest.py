"""Shared fixtures. Fixture modules per area are plugged in below."""

import os

# Offline everywhere: nothing may wait on the unreachable Hugging Face Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = ["fixtures_models", "fixtures_web", "fixtures_heads"]
