"""The data-flow space: layer stacks of resident sources, and their export as ordinary checkpoints."""
