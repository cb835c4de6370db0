"""Qwen2.5 in Flax NNX: model, Hugging Face checkpoint loading, and its tests."""
