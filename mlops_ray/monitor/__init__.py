"""Monitor: data and concept drift of a deployed model against its training reference.

:mod:`.drift` holds the estimator-style detectors (PSI, KS, chi-squared, Jensen–Shannon
distance, unseen-category share, null-rate change).
"""

from mlops_ray.monitor.drift import (CategoricalDriftDetector, DatasetDriftDetector, NumericDriftDetector, bin_counts,
                                     psi)

__all__ = ["NumericDriftDetector", "CategoricalDriftDetector", "DatasetDriftDetector", "psi", "bin_counts"]
