"""Reports: one self-contained HTML file of a pipeline's evaluations, probes, data and loss curves."""

from posttrain.report.html import example_tokens, plot_curves, write_report

__all__ = ["example_tokens", "plot_curves", "write_report"]
