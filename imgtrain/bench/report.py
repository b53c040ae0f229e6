"""The benchmark's figures as entries and as a table. Every measured figure is an entry made by
``rate``: images/s, the baseline's images/s measured the same way in the same process, and
their ratio."""

from __future__ import annotations

from typing import Any

PEER_ROWS = {  # figure -> what it is measured against
    "geometric": "decode ceiling (320x240)",
    "on_device": "decode ceiling (320x240)",
    "photo": "decode ceiling (500x375)",
    "vs_keras_layers": "Keras layers pipeline",
    "vs_image_data_generator": "ImageDataGenerator",
    "vs_albumentations": "Albumentations pipeline",
}


def rate(images_per_sec: float, baseline: float, **extra: Any) -> dict[str, Any]:
    """One figure: ``{images_per_sec, baseline_images_per_sec, ratio}`` plus what describes it."""
    return {
        "images_per_sec": round(images_per_sec, 1),
        "baseline_images_per_sec": round(baseline, 1),
        "ratio": round(images_per_sec / baseline, 3) if baseline > 0 else 0.0,
        **extra,
    }


def _row(figure: str, value: float, baseline: str, base_value: float, ratio: float) -> tuple[str, ...]:
    return (figure, f"{value:.0f}", baseline, f"{base_value:.0f}", f"{ratio:.2f}")


def _pipeline_rows(p: dict) -> list[tuple[str, ...]]:
    rows = [
        _row(f"pipeline.{k}", p[k]["images_per_sec"], "decode ceiling", p["ceiling"]["images_per_sec"], p[k]["ratio"])
        for k in ("folder", "tfrecord", "crop_only")
    ]
    for key, baseline in PEER_ROWS.items():
        if key in p:
            f = p[key]
            label = f"pipeline.{key}" + (f" (on {f['device']})" if "device" in f else "")
            rows.append(_row(label, f["images_per_sec"], baseline, f["baseline_images_per_sec"], f["ratio"]))
    return rows


def _train_rows(train: dict) -> list[tuple[str, ...]]:
    rows = []
    for name, t in train.items():
        if name == "cnn_steps_per_execution":
            n, label = t["steps_per_execution"], f"train.cnn.steps_per_execution={t['steps_per_execution']}"
            rows.append(_row(label, t["images_per_sec"], "model.fit, N=1", t["baseline_images_per_sec"], t["ratio"]))
            rows.append(
                _row(label, t["images_per_sec"], f"model.fit, N={n}", t["fit_same_n_images_per_sec"], t["ratio_same_n"])
            )
            continue
        if name == "cnn_tracked_to_a_silent_server":
            if "ratio" in t:  # else MLflow is not installed
                label = "train.cnn, MLflow to a server that never answers"
                rows.append(
                    _row(label, t["images_per_sec"], "same, untracked", t["baseline_images_per_sec"], t["ratio"])
                )
            continue
        rows.append(
            _row(f"train.{name}", t["imgtrain_images_per_sec"], "model.fit", t["fit_images_per_sec"], t["ratio"])
        )
        for opt in ("jit_compile", "mixed_precision"):
            if opt in t:
                o = t[opt]
                rows.append(
                    _row(
                        f"train.{name}.{opt}",
                        o["images_per_sec"],
                        "same, without",
                        o["baseline_images_per_sec"],
                        o["ratio"],
                    )
                )
    return rows


def _bucket_rows(b: dict) -> list[tuple[str, ...]]:
    rows = []
    if "data" in b:
        d = b["data"]
        for key, label in (
            ("streamed", "bucket.read each epoch (bytes)"),
            ("staged_once", "bucket.staged once (bytes)"),
        ):
            rows.append(
                _row(label, d[key]["images_per_sec"], "local disk", d[key]["baseline_images_per_sec"], d[key]["ratio"])
            )
    if "shards" in b:
        d = b["shards"]
        p, rec, first = d["pipeline"], d["records"], d["first_batch_seconds"]
        label, local = "bucket.shards streamed (pipeline)", "same shards on local disk"
        rows.append(_row(label, p["images_per_sec"], local, p["baseline_images_per_sec"], p["ratio"]))
        label = f"bucket.shards streamed (records; +{rec['transport_cpu_ms']:.3f} ms CPU/image)"
        rows.append(_row(label, rec["images_per_sec"], "same, local", rec["baseline_images_per_sec"], rec["ratio"]))
        streamed, copied = first["streamed"], first["copied_first"]
        ratio = f"{streamed / max(copied, 1e-9):.2f}"
        rows.append(("bucket.shards first batch", f"{streamed:.1f} s", "copied first", f"{copied:.1f} s", ratio))
    if "uploads" in b:
        u = b["uploads"]
        label = f"train.cnn, run uploaded (uploads {u['upload_share_of_epoch_time']:.1%} of its time)"
        rows.append(_row(label, u["images_per_sec"], "same, kept local", u["baseline_images_per_sec"], u["ratio"]))
    return rows


def format_table(r: dict) -> str:
    rows = [("figure", "images/s", "baseline", "baseline images/s", "ratio")]
    if "pipeline" in r:
        rows += _pipeline_rows(r["pipeline"]) + _train_rows(r["train"])
    rows += _bucket_rows(r.get("bucket", {}))
    if "memory" in r:
        m = r["memory"]
        rows.append(
            (
                f"memory ({m['large']['images']} vs {m['small']['images']} images)",
                f"{m['large']['peak_rss_bytes'] / 2**20:.0f} MiB",
                "small epoch",
                f"{m['small']['peak_rss_bytes'] / 2**20:.0f} MiB",
                f"{m['ratio']:.2f}",
            )
        )
    widths = [max(len(str(row[i])) for row in rows) for i in range(5)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if r.get("latency_ms"):
        lines.append(f"(every request to the bucket held {r['latency_ms']:g} ms by a delaying proxy)")
    return "\n".join(lines)
