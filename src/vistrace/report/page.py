"""The HTML shell of the report: styles, the embedded data block and the inlined page script."""

from __future__ import annotations

import html
from typing import Any

from .encode import script_json
from .script_attend import SCRIPT_ATTEND
from .script_charts import SCRIPT_CHARTS

# Nothing may be fetched: images are data URIs, scripts and styles are inline.
CSP = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
    "connect-src 'none'; form-action 'none'; base-uri 'none'"
)

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
.controls { display: flex; gap: 1.2em; flex-wrap: wrap; margin: .6em 0; align-items: center; }
.instance { display: flex; gap: 1.5em; align-items: flex-start; flex-wrap: wrap; }
.picture { position: relative; flex: none; background: #eee; }
.picture img, .picture canvas { position: absolute; left: 0; top: 0; width: 100%; height: 100%; }
.texts { max-width: 46em; } .question { font-weight: 600; }
.stage { white-space: pre-wrap; font-family: ui-monospace, monospace; }
.tok { cursor: pointer; border-radius: 2px; }
.tok.sel { outline: 2px solid #0a58ca; }
.info, .note { color: #555; }
.fig5 { display: flex; gap: 1em; } .fig5 canvas { width: 192px; height: 192px; image-rendering: pixelated; }
figure { margin: 0; text-align: center; }
table { border-collapse: collapse; margin: .5em 0; } td, th { border: 1px solid #ddd; padding: .2em .5em; }
img.thumb { max-width: 120px; max-height: 120px; } img.sample { max-width: 256px; }
tr.clickable { cursor: pointer; } tr.sel { background: #e7f0ff; } .error { color: #b00; }
"""


def render_page(title: str, data: dict[str, Any]) -> str:
    """The whole page: `data` as JSON in `<script type="application/json" id="vistrace-data">`."""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{html.escape(CSP)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{STYLE}</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
<noscript>This report draws its views with JavaScript; allow scripts for this file.</noscript>
<main id="app"></main>
<script type="application/json" id="vistrace-data">{script_json(data)}</script>
<script>{SCRIPT_ATTEND}{SCRIPT_CHARTS}</script>
</body>
</html>
"""


__all__ = ["CSP", "render_page"]
