"""GVSL backend: Geometric Visual Similarity Learning for 3D medical images (no Slicer, no Qt)."""
__version__ = "0.1.0"
