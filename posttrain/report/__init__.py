"""Reports: one self-contained HTML file made of sections (evaluations, differences, probes, a training
example, curves) that the pipeline's stages contribute."""

from posttrain.report.html import (
    Section,
    curves_html,
    differences_table,
    eval_table,
    example_html,
    example_tokens,
    family_changes_html,
    plot_curves,
    plot_family_changes,
    probes_table,
    write_report,
)

__all__ = ["Section", "curves_html", "differences_table", "eval_table", "example_html", "example_tokens",
           "family_changes_html", "plot_curves", "plot_family_changes", "probes_table", "write_report"]
