"""vtok: VTok video tokens at cluster scale."""

__version__ = "0.1.0"


def read_tokens(uri: str, storage_options: dict | None = None):  # noqa: ANN201
    """The committed shards of a vtok token dataset as a Ray Dataset."""
    from vtok.dataset import read_tokens as _read_tokens

    return _read_tokens(uri, storage_options)
