"""The ``cdev`` entry point: ``cdev crypt encrypt|decrypt`` without starting typer.

Starting typer costs more than encrypting a large file's worth of data: it imports rich
and pydantic and builds a pydantic validator for every parameter of the command it runs
(about 0.15 s of CPU here, against about 0.02 s for the interpreter itself). Encrypting
and decrypting files is the command run over and over in scripts, so its ordinary
invocations are parsed here by a strict parser built from :data:`OPTIONS`; anything it
does not fully understand (``--help``, a typo, a missing argument, an option given twice,
an empty value, an out-of-range number, options before ``crypt``, or a plugin that adds
commands and so might replace ``crypt``) goes to typer unchanged, which parses it, prints
its help or its usage error. The work itself is :func:`cdev.crypt_run.run` either way,
and errors are reported the same way as under typer
(:func:`cdev.errors.run_guarded`). For the same reason only the plugin of the provider in
use is imported when all plugins are built-in (:func:`cdev.plugins.load_for_provider`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cdev.errors import EXIT_INTERRUPTED, run_guarded
from cdev.plugins import (
    DEFAULT_PROVIDER,
    PROVIDER_ENV,
    load_for_provider,
    load_registry,
    plugin_options,
    set_registry,
)

# Every option of `cdev crypt encrypt` / `decrypt`: the spellings typer accepts, the
# CryptArgs field it sets, and whether it takes a value (else it is a flag). A test holds
# this table to the typer declarations in cdev/commands/crypt.py.
_COMMON: dict[str, tuple[str, bool]] = {
    "--output": ("output", True),
    "-o": ("output", True),
    "--provider": ("provider", True),
    "-p": ("provider", True),
    "--force": ("force", False),
    "-f": ("force", False),
    "--key-file": ("key_file", True),
    "--passphrase-file": ("passphrase_file", True),
    "--raw": ("raw", False),
    "--cipher": ("cipher", True),
    "--key": ("key_hex", True),
    "--iv": ("iv_hex", True),
}
OPTIONS: dict[str, dict[str, tuple[str, bool]]] = {
    "encrypt": {**_COMMON, "--work-factor": ("work_factor", True), "--suite": ("suite", True)},
    "decrypt": _COMMON,
}


def parse_crypt(argv: list[str]) -> dict[str, object] | None:
    """The CryptArgs fields for ``argv`` (what follows ``cdev crypt``), or None when
    typer should handle it. Values are checked only as far as typer's own parsing does."""
    if not argv or argv[0] not in OPTIONS:
        return None
    table = OPTIONS[argv[0]]
    fields: dict[str, object] = {"encrypt": argv[0] == "encrypt"}
    positional: list[str] = []
    i = 1
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "-" or not arg.startswith("-"):
            positional.append(arg)
            continue
        name, eq, value = arg.partition("=")
        if name not in table or (eq and not name.startswith("--")):
            return None  # --help, a typo, -ovalue: typer's to parse or to explain
        field, takes_value = table[name]
        if field in fields:
            return None  # given twice
        if not takes_value:
            if eq:
                return None
            fields[field] = True
            continue
        if not eq:
            if i == len(argv):
                return None
            value = argv[i]
            i += 1
        if not value:
            return None
        fields[field] = value
    if len(positional) != 1:
        return None
    fields["input_name"] = positional[0]
    return _typed(fields)


def _typed(fields: dict[str, object]) -> dict[str, object] | None:
    """Convert values as typer would, or None where typer would refuse or differ."""
    from cdev.keys import MIN_LOG_N, ScryptParams

    for name in ("key_file", "passphrase_file"):
        if name in fields:
            fields[name] = Path(str(fields[name]))
    if "work_factor" in fields:
        text = str(fields["work_factor"])
        if not text.isascii() or not text.isdigit():
            return None
        value = int(text)
        if not MIN_LOG_N <= value <= ScryptParams().log_n:
            return None
        fields["work_factor"] = value
    env_provider = os.environ.get(PROVIDER_ENV)
    if "provider" not in fields and env_provider:  # typer ignores it when empty, too
        fields["provider"] = env_provider
    return fields


def main() -> None:
    argv = sys.argv[1:]
    fields = parse_crypt(argv[1:]) if argv[:1] == ["crypt"] else None
    try:
        load, block = plugin_options(argv)
        if fields is not None:
            provider = str(fields.get("provider", DEFAULT_PROVIDER)).partition(":")[0]
            registry, complete = load_for_provider(provider, load, block)
            if complete and registry.adds_commands():
                fields = None  # a plugin's command may replace crypt: typer decides
        else:
            registry = load_registry(load, block)
    except KeyboardInterrupt:
        print("cdev: interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    set_registry(registry)
    if fields is not None:
        from cdev.crypt_run import CryptArgs, run

        args = CryptArgs(**fields)  # type: ignore[arg-type]
        sys.exit(run_guarded(lambda: run(args)))
    from cdev.cli import build_app

    build_app(registry)(prog_name="cdev")
