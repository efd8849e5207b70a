"""``python -m certcore.summarize``: the command line of ``certcore.evaluation.summarize``."""

from certcore.evaluation.summarize import main

if __name__ == "__main__":
    main()
