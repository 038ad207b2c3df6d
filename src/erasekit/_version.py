"""The package version, in a leaf module: the edit and export writers record it without importing the package root."""

__version__ = "0.1.0"
