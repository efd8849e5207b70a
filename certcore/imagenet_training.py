"""``python -m certcore.imagenet_training``: the command line of ``certcore.models.imagenet_training``."""

from certcore.models.imagenet_training import main

if __name__ == "__main__":
    main()
