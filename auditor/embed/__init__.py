"""Frozen-backbone embeddings: the backbones, the cached embedding run, nearest neighbours."""
