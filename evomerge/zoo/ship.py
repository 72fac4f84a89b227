"""`python -m evomerge.zoo.ship`: build the zoo of the default settings and ship it in the package.

Run from a source checkout after any change to the zoo's settings, data or training (until then
tests/test_zoo.py fails and names this command). It trains the zoo (about 2 minutes on 2 cores),
replaces `evomerge/zoo/shipped/` with it and records its checksums; then commit that directory and bring
docs/zoo.md's tables (from the new `zoo.json`) and the README's demo table (`evomerge demo`) up to date.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from evomerge.families import format_matrix
from evomerge.files import written_directory
from evomerge.zoo.build import build_zoo
from evomerge.zoo.settings import ZooSettings
from evomerge.zoo.shipped import SHIPPED_ZOO, write_checksums


def ship(out: Path = SHIPPED_ZOO, settings: ZooSettings = ZooSettings(), progress: bool = True) -> dict:
    """Build the zoo of `settings` with its checksums into `out`, in place of whatever zoo was there (which
    stays whole until the new one is complete); its manifest."""
    with written_directory(Path(out), replace=True) as staging:
        manifest = build_zoo(staging, settings, progress)
        write_checksums(staging)
    return manifest


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(
        prog="python -m evomerge.zoo.ship", description=__doc__.splitlines()[0]
    ).parse_args(argv)
    manifest = ship()
    print(f"shipped the zoo {manifest['hash']} in {SHIPPED_ZOO} (built in {manifest['build_seconds']} s)")
    print(format_matrix(manifest["accuracy"]["held_out"]))
    print(format_matrix(manifest["merge_check"]["held_out"]))


if __name__ == "__main__":
    main()
