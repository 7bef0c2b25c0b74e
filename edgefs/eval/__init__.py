"""Episodic evaluation on fixed episode lists, baselines and reports."""
