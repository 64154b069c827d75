"""Plotly figures written out: standalone HTML files, divs for a page, and PNGs.

PNGs come from one headless browser (kaleido's Chromium) per batch, started in a thread as
soon as it is made so that its seconds of start-up overlap whatever the caller does next.
Nothing here raises for a missing or broken browser: the HTML still goes, and a log line says
which PNGs are missing.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xattn.errors import one_line

if TYPE_CHECKING:
    import plotly.graph_objects as go

logger = logging.getLogger(__name__)

# plotly.js inside every HTML file (4.8 MB each): MLflow's UI shows an HTML artifact from a
# blob: URL, where the relative plotly.min.js of include_plotlyjs="directory" cannot load.
INCLUDE_PLOTLYJS = True
PNG_SIZE = (1000, 600)  # pixels (the HTML figures fill the window instead)
PNG_SIZES = {"connectivity_matrices": (1200, 620)}
PNG_TIMEOUT_S = 60  # per image: a browser that hangs must not hold a finished study for long
PNG_TABS = 2  # 10 figures on 2 cores: 2.8-3.2 s in two tabs against 4.3-5.3 s in one
DEFAULT_DIV_HEIGHT = 460  # px, for a figure that sets none: a div of height 100% inside a page has none


def write_html(figures: dict[str, go.Figure], folder: Path) -> None:
    """<name>.html of every figure in `folder`: a whole page with plotly.js inside, so it opens offline."""
    for name, figure in figures.items():
        figure.write_html(Path(folder) / f"{name}.html", include_plotlyjs=INCLUDE_PLOTLYJS, full_html=True)


def figure_div(name: str, figure: go.Figure) -> str:
    """The figure as a div (id figure-<name>) for a page that loads plotly.js once itself."""
    return figure.to_html(
        full_html=False,
        include_plotlyjs=False,
        div_id=f"figure-{name}",
        default_height=f"{figure.layout.height or DEFAULT_DIV_HEIGHT}px",
        config={"displaylogo": False, "responsive": True},
    )


class PngBrowser:
    """One headless browser (kaleido's Chromium) for a batch of PNGs, launched in a thread as
    soon as it is made, so that its start-up runs while the caller draws the figures."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[list[dict] | None] = queue.Queue()
        self._outcome: Any = None
        self._thread = threading.Thread(target=self._run, name="xattn-png-browser", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._outcome = asyncio.run(self._serve())
        except BaseException as error:  # noqa: BLE001 - handed to the caller of render
            self._outcome = error

    async def _serve(self) -> Any:
        import kaleido

        # MathJax would come from a CDN, which an offline cluster node cannot reach.
        async with kaleido.Kaleido(n=PNG_TABS, mathjax=False, timeout=PNG_TIMEOUT_S) as browser:
            jobs = await asyncio.to_thread(self._jobs.get)
            return () if jobs is None else await browser.write_fig_from_object(jobs)

    def render(self, jobs: list[dict]) -> tuple[Exception, ...]:
        """Write every job ({"fig", "path", "opts"}); the errors of those that failed."""
        self._jobs.put(jobs)
        self._thread.join(PNG_TIMEOUT_S * max(1, len(jobs)))
        if self._thread.is_alive():
            raise TimeoutError(f"the browser did not finish {len(jobs)} PNGs in time")
        if isinstance(self._outcome, Exception):
            raise self._outcome
        if isinstance(self._outcome, BaseException):  # the browser's loop was cancelled: not the caller's interrupt
            raise RuntimeError(f"the browser stopped ({self._outcome!r})")
        return tuple(self._outcome or ())

    def close(self) -> None:
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join(PNG_TIMEOUT_S)


def write_pngs(figures: dict[str, go.Figure], folder: Path, browser: PngBrowser | None = None) -> list[str]:
    """Write <name>.png of every figure into `folder` with one browser (each launch costs
    seconds); return the names written. Logs instead of raising."""
    jobs = [
        {"fig": figure, "path": folder / f"{name}.png", "opts": {"format": "png", **png_size(name, figure)}}
        for name, figure in figures.items()
    ]
    own = browser is None
    browser = browser or PngBrowser()
    try:
        errors = browser.render(jobs)
    except Exception as error:  # noqa: BLE001 - no browser, a broken browser: HTML still goes
        logger.warning("figures: no PNGs (%s); the HTML figures are logged", one_line(error, with_type=True))
        return []
    finally:
        if own:
            browser.close()
    written = [name for name in figures if (folder / f"{name}.png").is_file()]
    if errors or len(written) < len(figures):
        missing = sorted(set(figures) - set(written))
        logger.warning(
            "figures: PNGs of %s not rendered (%s)",
            ", ".join(missing),
            "; ".join(one_line(e, with_type=True) for e in errors),
        )
    return written


def png_size(name: str, figure: go.Figure) -> dict[str, int]:
    """A figure's own size where it sets one (Optuna's slice plot widens with its parameters)."""
    width, height = PNG_SIZES.get(name, PNG_SIZE)
    return {"width": int(figure.layout.width or width), "height": int(figure.layout.height or height)}
