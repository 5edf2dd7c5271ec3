"""The study report: what it reads, the analysis, findings, tables, renderings and figures."""
