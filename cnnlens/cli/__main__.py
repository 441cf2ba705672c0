"""``python -m cnnlens.cli``: the ``cnnlens`` command line."""

from cnnlens.cli import main

main()
