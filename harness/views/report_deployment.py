"""The report's Deployment section: per export arm ([[exports]]), its size beside the
adapter's and the base's (as loaded), and per metric the adapter's and the export's value,
the share of the adapter's gain over zero-shot the export keeps with its paired CI, and how
often its greedy text is the adapter's (run.json's ``export_comparisons``)."""

from __future__ import annotations

from typing import Any

from harness.views import formatting as F
from harness.views.report_data import ReportData, as_dict, label


def deployment_tables(d: ReportData) -> list[dict[str, Any]]:
    arms = as_dict(d.record.get("arms"))
    training = as_dict(d.record.get("training"))
    out = []
    for pair in d.record.get("export_comparisons") or []:
        pair = as_dict(pair)
        name, source = str(pair.get("export")), str(pair.get("from"))
        info = as_dict(as_dict(arms.get(name)).get("export"))
        agreement = as_dict(pair.get("agreement"))
        out.append({
            "arm": name, "from": source, "format": info.get("format"),
            "runtime": info.get("runtime"), "size": F.byte_size(info.get("bytes")),
            "adapter_size": F.byte_size(as_dict(training.get(source)).get("adapter_bytes")),
            "base_size": F.byte_size(info.get("base_bytes")),
            "agreement": (f"{agreement['same']} of {agreement['n_items']}"
                          if agreement.get("n_items") else F.DASH),
            "rows": [_row(as_dict(r), arms, name, source) for r in pair.get("retained") or []],
        })
    return out


def _row(r: dict[str, Any], arms: dict[str, Any], name: str, source: str) -> dict[str, Any]:
    metric = str(r.get("metric"))

    def value(arm: str) -> str:
        return F.metric(metric, as_dict(as_dict(arms.get(arm)).get("metrics")).get(metric))

    return {"metric": label(metric), "adapter": value(source), "export": value(name),
            "kept": F.percent(r.get("retained"), signed=False),
            "ci": F.interval(r.get("ci_low"), r.get("ci_high"),
                             lambda x: F.percent(x, signed=False))}
