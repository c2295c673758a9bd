"""The local prompt library (``--prompts DIR``): what a session's or a response's ``prompt``
(``{"id", "version", "variables"}``) names.

One prompt per id, in ``DIR``:

- ``DIR/<id>.md`` (or ``.txt``): a prompt without versions;
- ``DIR/<id>/<version>.md`` (or ``.txt``): its versions. Without ``version``, a prompt is
  ``DIR/<id>.md`` if there is one, else its highest version (numbers compare as numbers).

``{{name}}`` in the text is replaced by the variable ``name``. An unknown id or version, a
variable the text needs and the client left out, or one the text does not use, is an
``invalid_value`` error. The files are read once, at start: a session never waits on disk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from transceiver.protocol.config import Prompt
from transceiver.protocol.errors import ClientError

MAX_PROMPTS = 1000
MAX_PROMPT_BYTES = 64 * 1024
_SUFFIXES = (".md", ".txt")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_VARIABLE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*\}\}")


class PromptLibraryError(ValueError):
    """The prompt directory cannot be used (the transceiver does not start)."""


def _version_key(version: str) -> tuple[int, int, str]:
    return (1, int(version), "") if version.isdigit() else (0, 0, version)


@dataclass(frozen=True)
class _Entry:
    default: str | None  # the text of DIR/<id>.md
    versions: dict[str, str]

    def text(self, version: str | None) -> str | None:
        if version is not None:
            return self.versions.get(version)
        if self.default is not None:
            return self.default
        return self.versions[max(self.versions, key=_version_key)] if self.versions else None


class PromptLibrary:
    def __init__(self, prompts: dict[str, _Entry]) -> None:
        self._prompts = prompts

    @classmethod
    def load(cls, directory: str) -> PromptLibrary:
        root = Path(directory)
        if not root.is_dir():
            raise PromptLibraryError(f"--prompts {directory}: not a directory")
        defaults: dict[str, str] = {}
        versions: dict[str, dict[str, str]] = {}
        count = 0
        for path in sorted(root.iterdir()):
            if path.is_dir() and _NAME.fullmatch(path.name):
                found = {
                    file.stem: _read(file)
                    for file in sorted(path.iterdir())
                    if file.suffix in _SUFFIXES and file.is_file() and _NAME.fullmatch(file.stem)
                }
                if found:
                    versions[path.name] = found
                    count += len(found)
            elif path.suffix in _SUFFIXES and path.is_file() and _NAME.fullmatch(path.stem):
                defaults[path.stem] = _read(path)
                count += 1
            if count > MAX_PROMPTS:
                raise PromptLibraryError(f"--prompts {directory}: more than {MAX_PROMPTS} files")
        ids = set(defaults) | set(versions)
        return cls({i: _Entry(defaults.get(i), versions.get(i, {})) for i in ids})

    def ids(self) -> list[str]:
        return sorted(self._prompts)

    def resolve(self, prompt: Prompt, param: str) -> str:
        entry = self._prompts.get(prompt.id)
        if entry is None:
            raise ClientError(
                f"Invalid value: '{prompt.id}'. No prompt with this id in the prompt library.",
                param=f"{param}.id",
            )
        text = entry.text(prompt.version)
        if text is None:
            raise ClientError(
                f"Invalid value: '{prompt.version}'. Prompt '{prompt.id}' has no such version.",
                param=f"{param}.version",
            )
        values = prompt.values()
        needed = set(_VARIABLE.findall(text))
        missing, unused = sorted(needed - set(values)), sorted(set(values) - needed)
        if missing or unused:
            what = f"missing variable '{missing[0]}'" if missing else f"unused '{unused[0]}'"
            raise ClientError(
                f"Invalid value for prompt '{prompt.id}': {what} (the prompt's variables: "
                + (", ".join(f"'{name}'" for name in sorted(needed)) or "none")
                + ").",
                param=f"{param}.variables",
            )
        return _VARIABLE.sub(lambda match: values[match.group(1)], text).strip()


def _read(path: Path) -> str:
    if path.stat().st_size > MAX_PROMPT_BYTES:
        raise PromptLibraryError(f"{path}: larger than {MAX_PROMPT_BYTES} bytes")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptLibraryError(f"{path}: {exc}") from exc
