"""`evaluate(...)`: a checkpoint scored through one `EvalRequest`, spelled briefly for tests."""

from __future__ import annotations

from dataclasses import fields

from gistnet.eval.request import EvalRequest, EvalSettings
from gistnet.eval.run import evaluate_gistnet

SETTINGS = {f.name for f in fields(EvalSettings)}


def evaluate(checkpoint, dataset, *, on_progress=None, should_cancel=None, **options) -> dict:
    """The report of `checkpoint` on `dataset`; `options` are the fields of EvalSettings and
    of EvalRequest."""
    settings = EvalSettings(**{k: v for k, v in options.items() if k in SETTINGS})
    rest = {k: v for k, v in options.items() if k not in SETTINGS}
    request = EvalRequest(
        checkpoint=checkpoint, dataset=dataset, settings=settings, **rest
    )
    return evaluate_gistnet(request, on_progress=on_progress, should_cancel=should_cancel)
