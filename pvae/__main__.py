"""``python -m pvae``: the ``pvae`` command line (:func:`pvae.cli.main`)."""

from pvae.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
