"""`python -m casam ...` is the same as the `casam` command (and is what torchrun launches)."""

from casam.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
