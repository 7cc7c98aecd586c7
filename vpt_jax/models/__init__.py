"""Models: the ViT with checkpoint names, its prompted encoder, and checkpoint I/O."""
