"""``python -m experiments.figures``: see :mod:`experiments.figures`."""
from experiments.figures import main

main()
