"""Pure online learners and evaluators: no I/O in the models, no global state changed at import.

The models multiply small matrices (200 x 64), where OpenBLAS' thread pool costs far more than it
saves (measured: 8 ms instead of 40 us for a 200x32 @ 32x101 product on a 2-core machine); the
entry points (``agents``, ``streams``, ``bench``) pin BLAS to one thread before numpy loads.
"""
