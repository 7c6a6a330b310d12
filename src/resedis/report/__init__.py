"""The evaluation report: one self-contained HTML file (see :func:`write_report`)."""

from resedis.report.page import build_report_html, write_report

__all__ = ["build_report_html", "write_report"]
