"""``python -m certcore.evaluate``: the command line of ``certcore.evaluation.evaluate``."""

from certcore.evaluation.evaluate import main

if __name__ == "__main__":
    main()
