"""Readable training progress lines for the run log (pure: no Dagster import).

The training process reports events as dicts (`{"event": "progress", "step": 20, "total_steps": 120, "loss":
2.3141592, ...}`). `format_event` turns one into a line a person reads at a glance, followed by the same data,
rounded, as compact JSON for anyone who parses the log:

    step 20/120 (17%) · loss 2.314 · lr 3.00e-03 · 41.2 samples/s · epoch 3.3 · ETA 1m05s  {"event": "progress", ...}
"""

from __future__ import annotations

import json
import math
from typing import Any


def _sig(x: Any, digits: int = 4) -> Any:
    """Floats to `digits` significant digits (recursively in dicts and lists); other values unchanged."""
    if isinstance(x, bool) or not isinstance(x, (float, dict, list, tuple)):
        return x
    if isinstance(x, dict):
        return {k: _sig(v, digits) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_sig(v, digits) for v in x]
    if not math.isfinite(x) or x == 0:
        return x
    return round(x, max(0, digits - 1 - math.floor(math.log10(abs(x)))))


def eta_text(seconds: float) -> str:
    s = max(0, round(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m"
    return f"{m}m{sec:02d}s" if m else f"{sec}s"


def _bytes_text(n: Any) -> str:
    return f"{float(n) / 1e6:.1f} MB" if isinstance(n, (int, float)) else str(n)


def summary(event: dict) -> str:
    """The human part of the line (empty for an event without a known shape)."""
    kind = event.get("event")
    if kind == "progress":
        step, total = event.get("step"), event.get("total_steps")
        parts = [f"step {step}/{total}" + (f" ({100 * step / total:.0f}%)" if step and total else "")]
        if isinstance(event.get("loss"), (int, float)):
            parts.append(f"loss {event['loss']:.4g}")
        if isinstance(event.get("lr"), (int, float)):
            parts.append(f"lr {event['lr']:.2e}")
        rate = event.get("samples_per_s")
        if isinstance(rate, (int, float)):
            parts.append(f"{rate:.1f} samples/s")
        if isinstance(event.get("epoch"), (int, float)):
            parts.append(f"epoch {event['epoch']:.1f}")
        if isinstance(event.get("grad_norm"), (int, float)):
            parts.append(f"grad_norm {event['grad_norm']:.3g}")
        elapsed = event.get("elapsed_s")
        if step and total and isinstance(elapsed, (int, float)) and step > 0:
            start = event.get("start_step") or 0
            done = max(1, step - start)
            parts.append(f"ETA {eta_text(elapsed / done * (total - step))}")
        return " · ".join(parts)
    if kind == "start":
        params = (event.get("params") or {}).get("total") or {}
        trainable = params.get("trainable")
        extra = f" · {trainable:,} trainable params" if isinstance(trainable, int) else ""
        return (
            f"training started: {event.get('total_steps')} steps on {event.get('device')} ({event.get('dtype')}), "
            f"{event.get('train_samples')} train / {event.get('val_samples')} val samples{extra}"
        )
    if kind == "eval":
        loss = event.get("val_loss")
        loss_text = f"{loss:.4f}" if isinstance(loss, (int, float)) else str(loss)
        return f"validation loss {event.get('phase', '')} training: {loss_text}".replace("  ", " ")
    if kind == "checkpoint":
        return f"checkpoint at step {event.get('step')}"
    if kind == "resume":
        return f"resumed from step {event.get('step')}"
    if kind == "done":
        parts = [f"training done: {event.get('steps')} steps"]
        if isinstance(event.get("loss_end"), (int, float)):
            parts.append(f"final loss {event['loss_end']:.4g}")
        if isinstance(event.get("val_loss_after"), (int, float)):
            parts.append(f"val loss {event['val_loss_after']:.4f}")
        if isinstance(event.get("train_seconds"), (int, float)):
            parts.append(f"in {eta_text(event['train_seconds'])}")
        if "peak_memory_bytes" in event:
            parts.append(f"peak memory {_bytes_text(event['peak_memory_bytes'])}")
        return " · ".join(parts)
    return ""


def format_event(event: dict) -> str:
    """`<readable summary>  <rounded JSON>`; the JSON alone when the event has no known shape."""
    data = json.dumps(_sig(event), default=str, separators=(", ", ": "))
    text = summary(event)
    return f"{text}  {data}" if text else data
