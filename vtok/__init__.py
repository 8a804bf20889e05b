"""vtok: VTok video tokens at cluster scale."""

__version__ = "0.1.0"
