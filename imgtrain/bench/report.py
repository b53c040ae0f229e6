"""The benchmark's figures as entries and as a table. Every measured figure is an entry made by
``rate``: images/s, the baseline's images/s measured the same way in the same process, and
their ratio."""

from __future__ import annotations

from typing import Any

PEER_ROWS = {  # figure -> what it is measured against
    "geometric": "decode ceiling (320x240)",
    "photo": "decode ceiling (500x375)",
    "vs_keras_layers": "Keras layers pipeline",
    "vs_image_data_generator": "ImageDataGenerator",
}


def rate(images_per_sec: float, baseline: float, **extra: Any) -> dict[str, Any]:
    """One figure: ``{images_per_sec, baseline_images_per_sec, ratio}`` plus what describes it."""
    return {
        "images_per_sec": round(images_per_sec, 1),
        "baseline_images_per_sec": round(baseline, 1),
        "ratio": round(images_per_sec / baseline, 3) if baseline > 0 else 0.0,
        **extra,
    }


def format_table(r: dict) -> str:
    rows = [("figure", "images/s", "baseline", "baseline images/s", "ratio")]
    p = r["pipeline"]
    for key in ("folder", "tfrecord", "crop_only"):
        rows.append(
            (
                f"pipeline.{key}",
                f"{p[key]['images_per_sec']:.0f}",
                "decode ceiling",
                f"{p['ceiling']['images_per_sec']:.0f}",
                f"{p[key]['ratio']:.2f}",
            )
        )
    for key, baseline in PEER_ROWS.items():
        if key in p:
            rows.append(
                (
                    f"pipeline.{key}",
                    f"{p[key]['images_per_sec']:.0f}",
                    baseline,
                    f"{p[key]['baseline_images_per_sec']:.0f}",
                    f"{p[key]['ratio']:.2f}",
                )
            )
    for name, t in r["train"].items():
        if name == "cnn_steps_per_execution":
            n = t["steps_per_execution"]
            rows.append(
                (
                    f"train.cnn.steps_per_execution={n}",
                    f"{t['images_per_sec']:.0f}",
                    "model.fit, N=1",
                    f"{t['baseline_images_per_sec']:.0f}",
                    f"{t['ratio']:.2f}",
                )
            )
            rows.append(
                (
                    f"train.cnn.steps_per_execution={n}",
                    f"{t['images_per_sec']:.0f}",
                    f"model.fit, N={n}",
                    f"{t['fit_same_n_images_per_sec']:.0f}",
                    f"{t['ratio_same_n']:.2f}",
                )
            )
            continue
        rows.append(
            (
                f"train.{name}",
                f"{t['imgtrain_images_per_sec']:.0f}",
                "model.fit",
                f"{t['fit_images_per_sec']:.0f}",
                f"{t['ratio']:.2f}",
            )
        )
        for opt in ("jit_compile", "mixed_precision"):
            if opt in t:
                rows.append(
                    (
                        f"train.{name}.{opt}",
                        f"{t[opt]['images_per_sec']:.0f}",
                        "same, without",
                        f"{t[opt]['baseline_images_per_sec']:.0f}",
                        f"{t[opt]['ratio']:.2f}",
                    )
                )
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
    return "\n".join(lines)
