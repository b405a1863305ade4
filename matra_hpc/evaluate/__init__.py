"""Evaluation: the comparisons of the paper for a user's own runs.

- ``baseline``: the charge-balanced PyXtal baseline, written as a generated store;
- ``stats``: proportions with Wilson intervals and ratios of proportions (conditioning effect,
  model / baseline stable fraction);
- ``recovery``: held-out structures recovered by conditioned generation (paper Fig. 3);
- ``report``: ``report all``, one HTML page and its Markdown twin over every stage's report.
Heavy modules (torch, pymatgen, pyxtal, sklearn) load on first use.
"""
