"""``python -m cnnlens``: the ``cnnlens`` command line."""

from cnnlens.cli import main

main()
