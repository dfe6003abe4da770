"""posttrain: turn a pre-trained causal language model into an aligned assistant."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("posttrain")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+local"
