"""Stage "validate": every runtime of an export directory against the trained model in float64."""

from .compare import RELATIVE_TOLERANCE, Comparison, compare_outputs
from .reference import MAX_TIES, NEAR_TIE_MARGIN, Float64Reference, NearTie, TieFlip
from .report import RuntimeResult, ValidationReport, validate, validate_artifact
from .runtimes import REFERENCE, RUNTIMES, RuntimeUnavailable

__all__ = ["MAX_TIES", "NEAR_TIE_MARGIN", "REFERENCE", "RELATIVE_TOLERANCE", "RUNTIMES", "Comparison",
           "Float64Reference", "NearTie", "RuntimeResult", "RuntimeUnavailable", "TieFlip", "ValidationReport",
           "compare_outputs", "validate", "validate_artifact"]
