"""The docs stay true to the code: every ``osp ...`` command shown in README.md and docs/*.md parses
against the Click group (the subcommand exists, every option is one of its options, every choice one it
offers), and every relative link points at a file, and heading, that exists.

Commands are checked by walking click's parameters, never by running them. Placeholders (MODEL_DIR,
IN.mp4, ...) are fine where a value goes; what must be real is the command path and the option names.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from osp.cli.main import cli

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_BLOCKS = {"", "bash", "sh", "shell", "console"}
SEPARATORS = {"&&", "||", ";", "|", "&", "(", ")"}
PLACEHOLDERS = {"...", "…"}
FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)")
INLINE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
SUBSTITUTION = re.compile(r"\$\((osp [^)]*)\)")


def _page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def _shell_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, command) of every line of the shell code blocks, continuation lines joined."""
    in_block, shell, pending, start = False, False, "", 0
    for n, line in enumerate(text.splitlines(), 1):
        fence = FENCE.match(line)
        if fence:
            in_block, shell = (not in_block), fence.group(3).lower() in SHELL_BLOCKS
            continue
        if not (in_block and shell):
            continue
        if not pending:
            start = n
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield start, pending + line
        pending = ""


def _prose(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of every line outside code blocks."""
    in_block = False
    for n, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            in_block = not in_block
        elif not in_block:
            yield n, line


def _paragraphs(text: str) -> Iterator[tuple[int, str]]:
    """(first line number, text) of every paragraph outside code blocks, its lines joined by spaces: code
    spans and links may wrap across lines."""
    in_block, lines = False, []
    for n, line in [*enumerate(text.splitlines(), 1), (0, "")]:
        fence = FENCE.match(line)
        if not in_block and not fence and line.strip():
            lines.append((n, line.strip()))
            continue
        if lines:
            yield lines[0][0], " ".join(part for _, part in lines)
            lines = []
        in_block ^= bool(fence)


def _osp_commands(line: str) -> Iterator[list[str]]:
    """The argument lists of the ``osp`` commands on a shell line, ``$(osp ...)`` substitutions included."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    tokens = list(lexer)
    for token in tokens:
        for inner in SUBSTITUTION.findall(token):
            yield from _osp_commands(inner)
    segment: list[str] = []
    for token in [*tokens, ";"]:
        if token in SEPARATORS:
            if segment and segment[0] == "osp":
                yield segment[1:]
            segment = []
        else:
            segment.append(token)


def shown_commands() -> list[tuple[str, list[str]]]:
    """Every ``osp`` command line in README.md and docs/*.md, as (where, arguments after ``osp``)."""
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for n, line in _shell_lines(text):
            found += [(f"{_page_id(page)}:{n}", args) for args in _osp_commands(line)]
        for n, paragraph in _paragraphs(text):
            for span in INLINE.findall(paragraph):
                if span.startswith("osp "):
                    found += [(f"{_page_id(page)}:{n}", args) for args in _osp_commands(span)]
    return found


def _is_placeholder(value: str) -> bool:
    return (
        value in PLACEHOLDERS
        or "$" in value
        or any(part.isupper() for part in re.split(r"[^A-Za-z_]+", value))
    )


def check_command(args: list[str]) -> str | None:
    """Why ``osp ARGS`` would not parse (a missing subcommand, an unknown option, a choice the option does
    not offer, a positional argument where the command takes none), or None when it parses. Prose names
    options in passing (`osp generate --model`): an option last on the line may go without its value."""
    command: click.Command = cli
    path = ["osp"]
    rest = list(args)
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        sub = command.commands.get(rest[0])
        if sub is None:
            return f"{' '.join(path)} has no subcommand {rest[0]!r}"
        command, path = sub, [*path, rest.pop(0)]
    options = {
        name: param
        for param in command.params
        if isinstance(param, click.Option)
        for name in param.opts + param.secondary_opts
    }
    takes_arguments = any(isinstance(p, click.Argument) for p in command.params)
    help_names = {"--help", "-h"}
    i = 0
    while i < len(rest):
        token = rest[i]
        i += 1
        if token in PLACEHOLDERS:
            continue
        if not token.startswith("-") or token == "-":
            if not takes_arguments:
                return f"{' '.join(path)} takes no argument, got {token!r}"
            continue
        name, eq, value = token.partition("=")
        if name in help_names:
            continue
        param = options.get(name)
        if param is None:
            return f"{' '.join(path)} has no option {name}"
        if param.is_flag or param.count:
            if eq:
                return f"{' '.join(path)} {name} is a flag and takes no value"
            continue
        values = [value] if eq else rest[i : i + param.nargs]
        i += 0 if eq else param.nargs  # an option last on the line without its value is named, not used
        if isinstance(param.type, click.Choice):
            for v in values:
                if not _is_placeholder(v) and v not in param.type.choices:
                    return (
                        f"{' '.join(path)} {name} {v!r}: not one of {', '.join(map(str, param.type.choices))}"
                    )
    return None


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, all but letters, digits, ``_``, ``-`` and spaces
    dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, line in _prose(page.read_text(encoding="utf-8")):
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            slug = _slug(match.group(1))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            out.add(slug if count == 0 else f"{slug}-{count}")
    return out


def relative_links() -> list[tuple[str, Path, str]]:
    """(where, page, target) of every link in README.md and docs/*.md that is not a URL."""
    found = []
    for page in PAGES:
        for n, paragraph in _paragraphs(page.read_text(encoding="utf-8")):
            for target in LINK.findall(INLINE.sub("", paragraph)):
                if not re.match(r"^[a-z][a-z0-9+.-]*:", target):
                    found.append((f"{_page_id(page)}:{n}", page, target))
    return found


def test_the_pages_show_commands_and_links() -> None:
    # The scanner finds what the front page shows; a broken scanner would pass every check below.
    commands = [args for where, args in shown_commands() if where.startswith("README.md")]
    assert ["generate", "a red circle moving left on a black background", "-o", "out.mp4"] in commands
    assert any(target == "docs/demo-heldout.png" for _, _, target in relative_links())


def test_every_shown_osp_command_parses() -> None:
    problems = [f"{where}: osp {shlex.join(args)}: {why}" for where, args in shown_commands()
                if (why := check_command(args)) is not None]  # fmt: skip
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["generate", "a cat", "--model", "MODEL_DIR", "--engine", "compile", "--freeze", "-o", "o.mp4"],
            None,
        ),
        (["models", "assemble", "--transformer", "RUN/ema", "--vae", "VAE", "-o", "DIR"], None),
        (["train", "--config", "c.yaml", "--set", "optim.lr=3e-4", "--set=steps=2"], None),
        (["export", "--model", "M", "--dynamic", "--target", "onnx", "--out", "E"], None),
        (["export", "--model", "M", "--static"], None),
        (["generate", "x", "--engine", "coreml"], "'coreml': not one of"),
        (["generate", "x", "--enigne", "onnx"], "has no option --enigne"),
        (["vae", "presets", "extra"], "takes no argument"),
        (["data", "shuffle", "DIR"], "has no subcommand 'shuffle'"),
        (["export", "--freeze=yes"], "is a flag"),
    ],
)
def test_the_checker_tells_good_commands_from_bad(args: list[str], expected: str | None) -> None:
    why = check_command(args)
    assert why is None if expected is None else (why is not None and expected in why), why
    assert click_accepts(args) == (expected is None), "the checker and click disagree"


def click_accepts(args: list[str]) -> bool:
    """Whether click itself parses ``osp ARGS`` (concrete values only: it converts them too)."""
    command: click.Command = cli
    rest = list(args)
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        if rest[0] not in command.commands:
            return False
        command = command.commands[rest.pop(0)]
    try:
        command.make_context("osp", rest)
    except click.UsageError:
        return False
    return True


def test_every_relative_link_resolves() -> None:
    problems = []
    for where, page, target in relative_links():
        path_part, _, fragment = target.partition("#")
        path = (page.parent / path_part).resolve() if path_part else page
        if not path.exists():
            problems.append(f"{where}: {target}: no such file")
        elif fragment and path.suffix == ".md" and fragment not in anchors(path):
            problems.append(f"{where}: {target}: no heading #{fragment} in {path.relative_to(ROOT)}")
    assert not problems, "\n".join(problems)
