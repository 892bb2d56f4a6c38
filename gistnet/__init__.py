"""GistNet: compress each block of tokens into one vector in a frozen teacher's hidden space."""

__version__ = "0.1.0"
