"""Parse rules for settings: each turns a raw value (text from the kernel command
line or the environment, or a TOML value) into a typed one, or raises
``ValueError`` with the accepted values, never the value it was given."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off"}


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise ValueError("expected one of 1/0, true/false, yes/no, on/off")


def _number(kind: Callable[[Any], Any], minimum: float | None) -> Callable[[Any], Any]:
    def parse(value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("expected a number")
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected {'an integer' if kind is int else 'a number'}") from None
        if minimum is not None and number < minimum:
            raise ValueError(f"must be at least {minimum:g}")
        return number
    return parse


def _choice(choices: Iterable[str]) -> Callable[[Any], str]:
    allowed = tuple(choices)

    def parse(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in allowed:
            raise ValueError(f"accepted values: {', '.join(allowed)}")
        return text
    return parse


def _list(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    return [v.strip() for v in str(value).split(",") if v.strip()]


def _api_urls(value: Any) -> list[str]:
    urls = _list(value)
    for url in urls:
        if url != "mdns" and not url.startswith(("http://", "https://")):
            raise ValueError("each URL must start with http:// or https:// (or be 'mdns')")
    return [u.rstrip("/") for u in urls]


def _opt_str(value: Any) -> str | None:
    text = str(value).strip()
    return text or None


def _port(value: Any) -> int:
    port = _number(int, 1)(value)
    if port > 65535:
        raise ValueError("must be between 1 and 65535")
    return port


def _memory_mb(value: Any) -> int | str:
    if str(value).strip().lower() == "auto":
        return "auto"
    if isinstance(value, bool):
        raise ValueError("expected 'auto' or an integer number of MiB")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError("expected 'auto' or an integer number of MiB") from None
    if number < 0:
        raise ValueError("must be at least 0")
    return number
