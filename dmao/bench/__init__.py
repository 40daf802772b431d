"""Benchmarks (``dmao bench ...``). Each prints readable lines and, last, exactly one JSON line whose ``ratio`` is the
figure measured against a peer in the same run:

* ``overhead``: training throughput with DMAO's score tracking on / off (goal >= 0.98);
* ``event``: wall time of one re-allocation event on the paper's model (goal < 2 s on CPU; ``ratio`` = the event's
  time over one training step's on the same model);
* ``speed-vs-i6``: our training step against the paper authors' i6-models Conformer, same dimensions, batch and
  step (``ratio`` = their time / ours; goals >= 1.2 on CPU, >= 2.0 on GPU);
* ``throughput``: end-to-end training on the embedded corpus, data loading included, against the compute-only step
  rate of the same model (``ratio`` = end-to-end / compute-only audio seconds per second);
* ``inference``: decoding with a re-allocated model against the same-size uniform baseline (``ratio`` = baseline
  time / re-allocated time; goal >= 0.95).

Synthetic audio and labels (:func:`dmao.bench.common.synthetic_batch`, a real :class:`~dmao.data.batches.AudioBatch`)
stand in for data except in ``throughput``, so that only compute is timed.
"""

from dmao.bench.cli import add_bench_parser
from dmao.bench.common import synthetic_batch
from dmao.bench.overhead import OverheadBenchConfig, run_overhead

__all__ = ["OverheadBenchConfig", "add_bench_parser", "run_overhead", "synthetic_batch"]
