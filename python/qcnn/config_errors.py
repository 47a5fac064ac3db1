"""What every configuration check raises and how it names the key: ConfigError (re-exported by qcnn.config), in a
module of its own so that the modules config.py reads (the weight kinds) can raise it too."""
from __future__ import annotations


class ConfigError(ValueError):
    """A bad configuration value; the message names the file (when known) and the key path."""

    def __init__(self, path: str, message: str, file: str | None = None):
        self.key_path, self.file, self.message = path, file, message
        where = f"{file}: " if file else ""
        super().__init__(f"{where}{path or '<root>'}: {message}")


def join_key(path: str, key: str) -> str:
    """The key path of `key` under `path` (what a ConfigError names)."""
    return f"{path}.{key}" if path else key


def check_range(path: str, value, lo, hi) -> None:
    """A ConfigError naming `path` unless value is None or in [lo, hi]."""
    if value is not None and not lo <= value <= hi:
        raise ConfigError(path, f"must be in [{lo}, {hi}], got {value}")
