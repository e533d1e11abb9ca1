"""Reports: render measured results into figures, ``results.json`` and self-contained HTML."""

from moescope.report.sphere import write_sphere_report

__all__ = ["write_sphere_report"]
