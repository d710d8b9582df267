"""See the package docs in README."""

import online_models  # noqa: F401  (sets single-threaded BLAS before numpy loads)
