"""OpenDlign: open-world point-cloud recognition with depth-aligned CLIP (Python + PyTorch)."""

__version__ = '0.1.0'
