"""Pure online learners and evaluators (no I/O).

Importing the package pins BLAS to one thread unless the environment says otherwise: the models
multiply small matrices (200 x 64), where OpenBLAS' thread pool costs far more than it saves
(measured: 8 ms instead of 40 µs for a 200x32 @ 32x101 product on a 2-core machine).
"""

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
