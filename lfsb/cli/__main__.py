"""``python -m lfsb.cli``: the ``lfsb`` command line."""

from . import main

if __name__ == "__main__":
    main(prog_name="lfsb")
