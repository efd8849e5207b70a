"""Certified accuracy over a test set: the evaluation run, its results files, summaries, plots and the paper's
tables and figures. Imports only certcore.math, certcore.engine and certcore.models."""
