"""Pieces shared by the osp commands: error type, option types, consoles."""

from __future__ import annotations

import re
from typing import Any

import click
from rich.console import Console

console = Console()
err_console = Console(stderr=True)

DTYPE_CHOICE = click.Choice(["fp32", "fp16", "bf16"])


class UserError(click.ClickException):
    """Printed as ``Error: message``; exit status 2 like click's usage errors."""

    exit_code = 2


class SizeType(click.ParamType):
    """``256`` (square) or ``HxW`` such as ``256x448``."""

    name = "SIZE"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", str(value))
        if not match or int(match.group(1)) == 0 or (match.group(2) is not None and int(match.group(2)) == 0):
            self.fail(f"{value!r} is not a size: give S (square) or HxW, e.g. 256 or 256x448", param, ctx)
        h = int(match.group(1))
        w = int(match.group(2)) if match.group(2) is not None else h
        return (h, w)


SIZE = SizeType()
