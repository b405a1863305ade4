"""The data stage: published data sets -> filtered, tokenized Zarr token store.

- :mod:`matra_hpc.data.catalog` / :mod:`matra_hpc.data.fetch`: where the data sets live and
  resumable, checksum-verified downloads (``matra-hpc data fetch``).
- :mod:`matra_hpc.data.readers`: streaming readers of MP, Alexandria, WBM and plain folders.
- :mod:`matra_hpc.data.config`: ``DataPrepareConfig`` (defaults and validation);
  :mod:`matra_hpc.data.stage`: ``run_data_prepare(config, ctx)``
  (``matra-hpc data prepare|demo``, ``submit data-prepare``).
- :mod:`matra_hpc.data.store`: the store layout of docs/contracts.md section C, shards and
  manifests, ``consolidate`` and ``open_token_store`` (refuses foreign or unfinished stores).
- :mod:`matra_hpc.data.dataset`: the PyTorch side that training reads.
- :mod:`matra_hpc.data.demo`: the vendored flla_2015 demo set.
"""
