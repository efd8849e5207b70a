"""``python -m certcore.paper_figures``: the command line of ``certcore.evaluation.paper_figures``."""

from certcore.evaluation.paper_figures import main

if __name__ == "__main__":
    main()
