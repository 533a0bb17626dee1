"""pqorder: joint model compression where the order of methods is measured and optimized."""

from pqorder.errors import PqorderError
from pqorder.pipeline import Pipeline, PipelineResult, parse_pipeline, run_pipeline

__all__ = ["Pipeline", "PipelineResult", "PqorderError", "parse_pipeline", "run_pipeline"]
__version__ = "0.1.0"
