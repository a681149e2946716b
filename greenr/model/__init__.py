"""Model: architectures and backbones, the checkpoint format, the training loop, batched inference."""
