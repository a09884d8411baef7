"""Loading checkpoints, built-in model names, tiny offline checkpoints and their tokenizers."""
