"""evomerge: evolutionary search for the best merge of fine-tuned language models."""

__version__ = "0.1.0"
