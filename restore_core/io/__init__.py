"""Storage: datasets and artifacts through fsspec URLs."""
