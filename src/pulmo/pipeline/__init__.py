"""``analyze``: composes the tasks into the CXR (and later CT) pipelines and writes the outputs."""

from pulmo.findings import SCHEMA_VERSION, Findings
from pulmo.pipeline.analyze import AnalyzeResult, analyze_image, analyze_path

__all__ = ["SCHEMA_VERSION", "AnalyzeResult", "Findings", "analyze_image", "analyze_path"]
