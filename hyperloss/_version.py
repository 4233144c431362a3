"""The version, written here once: the package metadata, the C library (hl_version) and CMake read it."""

__version__ = "0.1.0"
