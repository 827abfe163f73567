"""Errors a user can fix. The CLI prints their message as one line and exits with code 2.

An error names what it is about in config keys, never in command-line flags: `key` is the
config key (or execution setting: jobs, backend, ensemble, out, only, format) the message is
about, and the message may name keys to set as placeholders, rendered by `text(flags)`:

- `{set:KEY=VALUE}` (or `{Set:...}` to start a sentence): the fix of setting KEY. Plain text
  says "set KEY=VALUE" (with VALUE `a|b`: "set KEY to a or b"). Where KEY has a flag of its
  own it reads "use --flag a or --flag b", elsewhere on the command line "pass --set KEY=VALUE".
- `{KEY}`: the name of a setting: KEY itself, or its flag on the command line.

The CLI passes its table of key -> flag (`cli.main.FLAGS`); the API shows `str(error)`.
"""

from __future__ import annotations

import re
from typing import Mapping, Optional

_PLACEHOLDER = re.compile(r"\{(?:([Ss]et):([\w.]+)=([^}]*)|([\w.]+))\}")


class NormlabError(Exception):
    """Bad input that the user can correct: the message says what is wrong and how to fix it."""

    def __init__(self, message: str, key: Optional[str] = None):
        self.template, self.key = message, key
        super().__init__(self.text())

    def __reduce__(self):  # a worker's error reaches the parent with its key and placeholders
        return type(self), (self.template, self.key)

    def text(self, flags: Optional[Mapping[str, str]] = None) -> str:
        """The message, with keys spelled as `flags` spells them (None: as config keys)."""
        cli = flags is not None
        flags = flags or {}

        def render(m: re.Match) -> str:
            verb, key, value, name = m.groups()
            if name is not None:
                return flags.get(name, name)
            values = value.split("|")
            if key in flags:
                word = "use" if verb == "set" else "Use"
                return f"{word} " + " or ".join(f"{flags[key]} {v}" for v in values)
            word = verb if not cli else ("pass" if verb == "set" else "Pass")
            prefix = "--set " if cli else ""
            if len(values) > 1 and not cli:
                return f"{word} {key} to {' or '.join(values)}"
            return f"{word} " + " or ".join(f"{prefix}{key}={v}" for v in values)

        body = _PLACEHOLDER.sub(render, self.template)
        return f"{flags.get(self.key, self.key)}: {body}" if self.key else body


class ConfigError(NormlabError):
    """A config value is missing, unknown, of the wrong type or out of range."""


class DataError(NormlabError):
    """A dataset cannot be loaded (missing files, no network, unreadable folder)."""


def count_or_none(value) -> Optional[int]:
    """`value` as a count >= 1 (an int or its text), or None where it is not one: the caller raises
    the error that names its own setting."""
    try:
        n = int(value)
    except (TypeError, ValueError):
        return None
    return n if n >= 1 else None
