"""Code that only the benchmark scripts in `benchmarks/` use (not part of the installed `condiff` package): the
textbook reference sampler, the sampler speed/quality benchmark, FLOP counting and the matmul peak, the bare
training loop and the compute-efficiency benchmark, with their tables and plots.

The scripts import it as `lib.<module>` (Python puts `benchmarks/` first on the path when it runs one of them;
the tests add it). It uses only condiff's public API: `condiff.evaluation`, `condiff.models`, `condiff.diffusion`,
`condiff.data`, `condiff.pipelines.guidance` and the training command `condiff.train.main`.
"""
