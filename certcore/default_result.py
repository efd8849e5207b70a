"""``python -m certcore.default_result``: the command line of ``certcore.views.default_result``."""

from certcore.views.default_result import main

if __name__ == "__main__":
    main()
