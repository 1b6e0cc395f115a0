"""AutoRetouch inference: the generator, its checkpoint format, the tiled engine and the server."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("autoretouch")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
