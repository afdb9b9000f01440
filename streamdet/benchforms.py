"""`streamdet bench --forms`: the model alone in each candidate form, one thread, alternated in one
run, each with the largest difference of its losses from the artifact as saved and the decisions
that difference flips at the artifact's threshold (printed, not asserted)."""
from __future__ import annotations

import copy
import time
import warnings

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from streamdet.detect.artifact import Model
from streamdet.detect.features import LogMel
from streamdet.detect.model import INFERENCE_FORM, inference_form, rebuild_eager


class Autocast(torch.nn.Module):
    """A network run under CPU autocast to bfloat16, its outputs back in float32."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def errors(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, bands = self.net.errors(windows)
        return loss.float(), bands.float()


def candidate_forms(model: Model) -> dict:
    """name -> a module with errors(windows), all from the one artifact."""
    p = model.features
    eager = rebuild_eager(model.module, model.meta["model"], LogMel(p), p.window_frames, p.n_mels)
    fast = eager if model.meta["model"].get("form") == INFERENCE_FORM else inference_form(eager)
    forms = {"as saved (scripted)": model.module, "eager, as trained": eager, "inference form, scripted": torch.jit.script(fast)}
    forms["inference form, frozen + optimize_for_inference"] = torch.jit.optimize_for_inference(
        torch.jit.freeze(torch.jit.script(fast), preserved_attrs=["errors"]), other_methods=["errors"])
    forms["inference form, channels-last (eager)"] = copy.deepcopy(fast).to(memory_format=torch.channels_last)
    with warnings.catch_warnings():  # torch.ao.quantization says it moves to torchao; it is torch's own here
        warnings.simplefilter("ignore")
        forms["inference form, int8 dynamic linear layers (eager)"] = torch.ao.quantization.quantize_dynamic(copy.deepcopy(fast), {torch.nn.Linear}, dtype=torch.qint8)
    forms["inference form, bfloat16 autocast (eager)"] = Autocast(fast)
    return forms


def run_forms(model: Model, windows: torch.Tensor, batch: int = 64, rounds: int = 5, console: Console | None = None) -> dict:
    console = console or Console()
    threshold = float(model.meta["scoring"]["threshold"])
    forms = candidate_forms(model)
    with torch.no_grad():
        reference = model.module.errors(windows)[0]
        rows = {}
        for name, form in forms.items():
            losses = torch.cat([form.errors(windows[i : i + 256])[0] for i in range(0, len(windows), 256)])
            flipped = int(((losses >= threshold) != (reference >= threshold)).sum())
            rows[name] = {"max_abs_loss_diff": float((losses - reference).abs().max()), "flipped": flipped, "windows_per_s": []}
        timed = windows[: max(batch, len(windows) // batch * batch)][: 40 * batch]
        for _ in range(rounds):
            for name, form in forms.items():
                form.errors(timed[:batch])
                started = time.perf_counter()
                for i in range(0, len(timed), batch):
                    form.errors(timed[i : i + batch])
                rows[name]["windows_per_s"].append(len(timed) / (time.perf_counter() - started))
    base = float(np.median(rows["as saved (scripted)"]["windows_per_s"]))
    for row in rows.values():
        row["median"] = float(np.median(row["windows_per_s"]))
        row["ratio"] = row["median"] / base
    _print(console, rows, len(windows), batch, threshold)
    return {"windows": len(windows), "batch": batch, "threads": torch.get_num_threads(), "forms": rows}


def _print(console: Console, rows: dict, windows: int, batch: int, threshold: float) -> None:
    table = Table(title=f"the model alone, batches of {batch}, {torch.get_num_threads()} torch thread(s); losses on {windows} windows")
    for column in ("form", "windows/s (median, range)", "vs as saved", "max |loss diff|", f"decisions flipped at {threshold:.3f}"):
        table.add_column(column, justify="left" if column == "form" else "right")
    for name, r in rows.items():
        low, high = min(r["windows_per_s"]), max(r["windows_per_s"])
        table.add_row(name, f"{r['median']:,.0f} ({low:,.0f}-{high:,.0f})", f"{r['ratio']:.2f}x", f"{r['max_abs_loss_diff']:.2g}", str(r["flipped"]))
    console.print(table)
