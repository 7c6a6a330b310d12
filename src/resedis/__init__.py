"""resedis: referring search and discovery over image collections."""

__version__ = "0.1.0"
