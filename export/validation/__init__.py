"""Stage "validate": every runtime of an export directory against the trained model."""

from .compare import RELATIVE_TOLERANCE, Comparison, compare_outputs
from .report import RuntimeResult, ValidationReport, validate_artifact
from .runtimes import REFERENCE, RUNTIMES, RuntimeUnavailable

__all__ = ["REFERENCE", "RELATIVE_TOLERANCE", "RUNTIMES", "Comparison", "RuntimeResult", "RuntimeUnavailable",
           "ValidationReport", "compare_outputs", "validate_artifact"]
