"""Per-image measurements: pixel statistics (numpy reference, numba kernels), hashes,
pixel-level copy verification, and the worker pool that runs them."""
