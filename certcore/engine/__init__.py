"""The sampling engine: ablate an image, count a classifier's labels over n ablations, and turn the counts into a
``Certificate`` (``certify``). torch; imports only certcore.math."""
