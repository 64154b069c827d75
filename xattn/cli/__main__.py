"""`python -m xattn.cli`: the `xattn` command run as a module."""

from xattn.cli import main

if __name__ == "__main__":
    main()
