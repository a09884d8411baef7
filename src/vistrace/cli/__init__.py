"""The `vistrace` command line: a thin shell that parses options, builds a config and calls one
library function.

One module per command group: :mod:`~vistrace.cli.knockout` (trace, export, plot flow),
:mod:`~vistrace.cli.evaluation` (eval, score, build), :mod:`~vistrace.cli.attention` (attend and its
figures), :mod:`~vistrace.cli.tools` (check, tiny, demo, report); :mod:`~vistrace.cli.options` holds
the options they share, :mod:`~vistrace.cli.app` the application and its error report.
"""

from __future__ import annotations

from collections.abc import Callable

from vistrace.cli import attention, evaluation, knockout, tools
from vistrace.cli.app import Command, app, main, plot_app

__all__ = ["app", "main"]

COMMANDS: tuple[tuple[str, Callable[..., None]], ...] = (
    ("check", tools.check),
    ("tiny", tools.tiny),
    ("trace", knockout.trace),
    ("export", knockout.export),
    ("attend", attention.attend),
    ("eval", evaluation.eval_command),
    ("score", evaluation.score),
    ("build", evaluation.build),
    ("demo", tools.demo),
    ("report", tools.report),
)
PLOTS: tuple[tuple[str, Callable[..., None]], ...] = (
    ("flow", knockout.plot_flow),
    ("avg-attention", attention.plot_avg_attention),
    ("text-heatmap", attention.plot_text_heatmap),
    ("image-heatmap", attention.plot_image_heatmap),
)
for _name, _command in COMMANDS:
    app.command(_name, cls=Command)(_command)
app.add_typer(plot_app, name="plot")
for _name, _command in PLOTS:
    plot_app.command(_name, cls=Command)(_command)
