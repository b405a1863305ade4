"""Grammar-constrained, KV-cached batched sampling from the Matra-Genoa transformer (paper II.2)."""

from matra_hpc.sample.sampler import SampledSequence, SamplerSettings, SamplingStats, sample_sequences

__all__ = ["SampledSequence", "SamplerSettings", "SamplingStats", "sample_sequences"]
