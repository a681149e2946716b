"""Backbones that need more than a torchvision constructor (shipped weights, key checks)."""
