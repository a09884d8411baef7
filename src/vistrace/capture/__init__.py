"""Generation with image-attention capture, and the pooling of captured maps."""
