"""The argument parser every command line of the project uses: a flag that takes one value may be given once.

argparse keeps the last of a repeated flag silently, so `--model ViT-B-32 ... --model demo` (an edited command, a
script that appends flags) would run with a model the user did not mean. `Parser` refuses it; flags meant to be
repeated (`--images DIR`, `--allow-dir DIR`: action "append") and switches are unaffected. Subcommand parsers are
built from the same class (argparse's default for `add_subparsers`), so every `vlm` command checks its flags.
"""

from __future__ import annotations

import argparse
from typing import Any

_GIVEN = "_flags_given"  # the namespace attribute recording the flags seen in this parse


class _StoreOnce(argparse._StoreAction):
    def __call__(self, parser, namespace, values, option_string=None):
        given = getattr(namespace, _GIVEN, None)
        if given is None:
            given = set()
            setattr(namespace, _GIVEN, given)
        if option_string is not None:
            if self.dest in given:
                parser.error(
                    f"{option_string} was given twice (the second value {values!r} would silently replace the "
                    f"first {getattr(namespace, self.dest)!r}); give it once"
                )
            given.add(self.dest)
        super().__call__(parser, namespace, values, option_string)


class Parser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` whose single-value flags refuse to be repeated."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register("action", None, _StoreOnce)
        self.register("action", "store", _StoreOnce)

    def parse_known_args(self, args=None, namespace=None):
        parsed, extras = super().parse_known_args(args, namespace)
        if hasattr(parsed, _GIVEN):
            delattr(parsed, _GIVEN)  # bookkeeping, not an option
        return parsed, extras
