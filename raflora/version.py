"""raflora's version, one place for the package, the CLI and what exports record."""

__version__ = "0.1.0"
