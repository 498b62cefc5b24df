"""Sparse training of a multi-task model: the loop, task weighting, runs over several
processes, and the checkpoints a stopped run resumes from."""
