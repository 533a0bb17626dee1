"""Text sources, calibration sampling and evaluation splits."""

from pqorder.data.calibration import CalibrationSpec, sample_calibration
from pqorder.data.sources import TextSource, load_text, tokenize

__all__ = ["CalibrationSpec", "TextSource", "load_text", "sample_calibration", "tokenize"]
