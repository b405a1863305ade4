"""Evaluation: the comparisons of the paper for a user's own runs.

- ``config``: the dataclasses of every entry (defaults and validation);
- ``stage``: ``run_baseline``, ``run_recovery``, ``run_conditioning``, ``run_report_all``;
- ``baseline``: the charge-balanced PyXtal rows, written as a generated store;
- ``stats``: proportions with Wilson intervals and ratios of proportions (conditioning effect,
  model / baseline stable fraction);
- ``recovery``: held-out structures recovered by conditioned generation (paper Fig. 3);
- ``embeddings``: t-SNE maps of the learned element and space-group embeddings (Figs. 9-10);
- ``report``: ``report all``, one HTML page and its Markdown twin over every stage's report.
Heavy modules (torch, pymatgen, pyxtal, sklearn) load on first use.
"""
