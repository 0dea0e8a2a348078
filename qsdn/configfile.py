"""Typed reading of YAML configuration files whose errors name the file and the key path."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from qsdn.errors import ConfigError


class YamlReader:
    """Typed access to a YAML mapping that names the key path in every error."""

    def __init__(self, data: Any, where: str, source: str) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: {where or 'top level'}: must be a mapping")
        self.data = data
        self.where = where
        self.source = source
        self.used: set[str] = set()

    def _name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str, why: str) -> ConfigError:
        return ConfigError(f"{self.source}: {self._name(key)}: {why}", path=self._name(key))

    def get(self, key: str, default: Any = None, *, required: bool = False) -> Any:
        self.used.add(key)
        if key not in self.data or self.data[key] is None:
            if required:
                raise self.fail(key, "is required")
            return default
        return self.data[key]

    def text(self, key: str, default: str | None = None, *, required: bool = False) -> Any:
        v = self.get(key, default, required=required)
        if v is not None and not isinstance(v, str):
            raise self.fail(key, "must be a string")
        return v

    def int(
        self, key: str, default: int | None = None, *, lo: int | None = None, hi: int | None = None
    ) -> Any:
        v = self.get(key, default, required=default is None)
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.fail(key, "must be an integer")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise self.fail(key, f"must be between {lo} and {hi}")
        return v

    def num(
        self, key: str, default: float | None = None, *, lo: float | None = None, hi: float | None = None
    ) -> float:
        v = self.get(key, default, required=default is None)
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise self.fail(key, "must be a number")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise self.fail(key, f"must be between {lo} and {hi}")
        return float(v)

    def sub(self, key: str, *, required: bool = False) -> YamlReader:
        v = self.get(key, {}, required=required)
        return YamlReader(v, self._name(key), self.source)

    def items(self, key: str) -> list[YamlReader]:
        v = self.get(key, [])
        if not isinstance(v, list):
            raise self.fail(key, "must be a list")
        return [YamlReader(x, f"{self._name(key)}[{i}]", self.source) for i, x in enumerate(v)]

    def done(self) -> None:
        extra = sorted(set(map(str, self.data)) - self.used)
        if extra:
            raise self.fail(extra[0], "unknown key")
