"""``python -m certcore.train``: the command line of ``certcore.models.training``."""

from certcore.models.training import main

if __name__ == "__main__":
    main()
