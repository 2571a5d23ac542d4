"""Training: the tiny world's data, the tokenizer and unified stages, and the one training loop."""
