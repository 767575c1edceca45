"""The shared trainer's parts: config, data, checkpoints and one plugin per method."""
