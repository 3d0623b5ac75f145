"""What the server owner lets one web request ask for (`python app.py --max-...` flags). Its own module, free of
torch and Gradio, so the option parser (`ui.serve`) takes its defaults from here before anything heavy is imported."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """What one request may ask for. Uploads above `max_upload_mb` are refused by Gradio before they reach us; an
    uploaded .zip may not unpack to more than that either."""

    max_upload_mb: float = 20.0
    max_pixels: int = 25_000_000  # per uploaded image (a 50-megapixel photo is refused, with a message)
    max_labels: int = 1000  # per classification
    max_phrases: int = 12  # per segmentation
    max_k: int = 100  # search results
    max_text_chars: int = 1000  # queries and phrases
    max_train_steps: int = 5000  # per training run started from the web
    max_train_minutes: float = 60.0  # a run started from the web stops (saving) after this long
    upload_retention_hours: float = 24.0  # uploaded datasets of ended runs are removed after this long
