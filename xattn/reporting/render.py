"""Plotly figures written out: one offline page holding every figure, divs for a page, and PNGs.

PNGs come from one headless browser (kaleido's Chromium) per batch, started in a thread as
soon as it is made so that its seconds of start-up overlap whatever the caller does next.
Nothing here raises for a missing or broken browser: the HTML still goes, and a log line says
which PNGs are missing.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import gzip
import html
import json
import logging
import queue
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xattn.errors import one_line

if TYPE_CHECKING:
    import plotly.graph_objects as go

logger = logging.getLogger(__name__)

PNG_SIZE = (1000, 600)  # pixels (the HTML figures fill the window instead)
PNG_SIZES = {"connectivity_matrices": (1200, 620)}
PNG_TIMEOUT_S = 60  # per image: a browser that hangs must not hold a finished study for long
PNG_TABS = 2  # 10 figures on 2 cores: 2.8-3.2 s in two tabs against 4.3-5.3 s in one
DEFAULT_DIV_HEIGHT = 460  # px, for a figure that sets none: a div of height 100% inside a page has none
PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}


def write_figures_page(figures: dict[str, go.Figure], path: Path, *, title: str, titles: dict[str, str]) -> None:
    """One HTML page holding every figure and plotly.js once, so it opens offline (see figures_page)."""
    Path(path).write_text(figures_page(figures, title=title, titles=titles), encoding="utf-8")


def figures_page(figures: dict[str, go.Figure], *, title: str, titles: dict[str, str]) -> str:
    """Every figure on one page that needs nothing but itself: plotly.js is inside, gzipped.

    MLflow's UI shows an HTML artifact from a blob: URL, where a plotly.js beside the page
    cannot load, so the page carries its own; gzipped and base64-encoded it costs 2.0 MB
    instead of 4.8 MB, once for all the figures instead of once per figure. The browser
    inflates it with DecompressionStream (Chrome 80, Firefox 113, Safari 16.4 and later)."""
    sections = "\n".join(
        f'<section id="section-{name}" data-figure="{name}">'
        f"<h2>{html.escape(titles.get(name, name))}</h2>"
        f'<div class="figure" id="figure-{name}" style="height:{figure.layout.height or DEFAULT_DIV_HEIGHT}px"></div>'
        f'<script type="application/json" class="figure-json">{_script_safe(figure.to_json())}</script>'
        "</section>"
        for name, figure in figures.items()
    )
    contents = " ".join(f'<a href="#section-{name}">{html.escape(titles.get(name, name))}</a>' for name in figures)
    return _PAGE.format(
        title=html.escape(title),
        contents=contents,
        sections=sections,
        plotly_js=_packed_plotly_js(),
        config=json.dumps(PLOTLY_CONFIG),
    )


def _script_safe(text: str) -> str:
    """JSON that cannot end its <script> element: every < escaped (it only occurs inside strings)."""
    return text.replace("<", "\\u003c")


@functools.cache
def _packed_plotly_js() -> str:
    """plotly.min.js gzipped (mtime 0: the same bytes every time) and base64-encoded."""
    import plotly.offline

    return base64.b64encode(gzip.compress(plotly.offline.get_plotlyjs().encode(), 9, mtime=0)).decode("ascii")


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
  body {{ font-family: system-ui, sans-serif; color: #222; margin: 0 24px 40px; }}
  h1 {{ font-size: 1.35em; }}
  h2 {{ font-size: 1.1em; margin: 28px 0 6px; }}
  nav a {{ margin-right: 14px; }}
  #status {{ color: #666; font-style: italic; }}
  .figure {{ width: 100%; border: 1px solid #ddd; }}
</style>
</head>
<body>
<h1>{title}</h1>
<nav>{contents}</nav>
<p id="status">drawing the figures&hellip;</p>
{sections}
<script type="application/octet-stream" id="plotly-js-gzip-base64">{plotly_js}</script>
<script>
(async () => {{
  if (typeof DecompressionStream === "undefined") {{
    throw new Error("this browser cannot inflate plotly.js (no DecompressionStream): "
      + "the PNGs beside this page show the same figures");
  }}
  const packed = document.getElementById("plotly-js-gzip-base64").textContent;
  const bytes = Uint8Array.from(atob(packed), (c) => c.charCodeAt(0));
  const inflated = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
  const plotly = document.createElement("script");
  plotly.textContent = await new Response(inflated).text();
  document.head.appendChild(plotly);  // runs now: an inline script runs as it is inserted
  for (const section of document.querySelectorAll("section[data-figure]")) {{
    const figure = JSON.parse(section.querySelector("script.figure-json").textContent);
    await Plotly.newPlot(section.querySelector(".figure"), figure.data, figure.layout, {config});
  }}
  document.getElementById("status").remove();
}})().catch((error) => {{
  document.getElementById("status").textContent = "figures not drawn: " + error.message;
  console.error(error);
}});
</script>
</body>
</html>
"""


def figure_div(name: str, figure: go.Figure) -> str:
    """The figure as a div (id figure-<name>) for a page that loads plotly.js once itself."""
    return figure.to_html(
        full_html=False,
        include_plotlyjs=False,
        div_id=f"figure-{name}",
        default_height=f"{figure.layout.height or DEFAULT_DIV_HEIGHT}px",
        config=PLOTLY_CONFIG,
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
