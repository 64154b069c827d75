"""What a study looks like: its figures (figures.py, drawn by plots.py from study_data.py,
written by render.py), its report page (report.py) and the predictions they are drawn from
(predictions.py)."""

from xattn.reporting.figures import FIGURE_NAMES, log_study_figures, study_figures

__all__ = ["FIGURE_NAMES", "log_study_figures", "study_figures"]
