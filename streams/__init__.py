"""See the package docs in README."""

import os

# one BLAS thread unless the environment says otherwise (see online_models/__init__.py); set
# here, by the entry point, before numpy loads
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
