"""Serve the web app: the options `python app.py` and `vlm serve` share (`ServeConfig`), and the one function both
call.

    serve(ServeConfig(model="demo", port=7860))     loads the model, opens (or builds) the collection, serves until
                                                    interrupted

Both entry points only parse arguments (`add_arguments`, then `serve_config`); this module turns them into `ui.app`
calls. It imports neither torch nor Gradio at the top, so that `limit_malloc_arenas` runs before they start threads.
"""

from __future__ import annotations

import argparse
import dataclasses

from ui.limits import Limits
from vlm import config
from vlm.errors import ConfigError

_POSITIVE = ("max_upload_mb", "max_megapixels", "concurrency", "max_train_steps", "max_train_minutes",
             "upload_retention_hours")  # fmt: skip


def _opt(default, help: str, **meta):
    return dataclasses.field(default=default, metadata={"help": help, **meta})


@dataclasses.dataclass
class ServeConfig:
    """What `vlm serve` / `python app.py` take; each field is a flag (`--max-upload-mb` ...)."""

    model: str = config.field_of(config.ModelOptions, "model")
    pretrained: str | None = config.field_of(config.ModelOptions, "pretrained")
    device: str | None = config.field_of(config.ModelOptions, "device")
    images: tuple[str, ...] = _opt((), "a folder of images to search; repeat", repeatable=True, metavar="DIR")
    collection: str | None = _opt(None, "an existing collection, or where to keep the app's collections", metavar="DIR")
    cache_dir: str | None = _opt(None, "where demo and --images collections live (none: ~/.cache/vlm)", metavar="DIR")
    runs_dir: str = _opt("runs/app", "where training runs go", metavar="DIR")
    allow_dir: tuple[str, ...] = _opt(
        (),
        "a further folder whose paths people may type (add images, train on a dataset); repeat",
        repeatable=True,
        metavar="DIR",
    )
    host: str = _opt("127.0.0.1", "address to bind; 0.0.0.0 for every interface")
    port: int = _opt(7860, "port to serve on (0: any free one)")
    share: bool = _opt(False, "also make a public gradio.live link")
    auth: str | None = _opt(None, "require this user name and password", metavar="USER:PASS")
    max_upload_mb: float = _opt(Limits.max_upload_mb, "largest upload accepted")
    max_megapixels: float = _opt(Limits.max_pixels / 1e6, "largest image accepted, in megapixels")
    concurrency: int = _opt(2, "requests computed at once")
    max_train_steps: int = _opt(Limits.max_train_steps, "most steps of a training run started from the web")
    max_train_minutes: float = _opt(Limits.max_train_minutes, "web-started runs stop (saving) after this long")
    upload_retention_hours: float = _opt(Limits.upload_retention_hours, "uploads are deleted this long after a run")

    def __post_init__(self) -> None:
        if self.auth is not None and ":" not in self.auth:
            raise ValueError("--auth takes USER:PASS")
        for name in _POSITIVE:
            if not getattr(self, name) > 0:  # also refuses NaN
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port must be 0..65535, got {self.port}")

    @property
    def limits(self) -> Limits:
        return Limits(
            max_upload_mb=self.max_upload_mb,
            max_pixels=int(self.max_megapixels * 1e6),
            max_train_steps=self.max_train_steps,
            max_train_minutes=self.max_train_minutes,
            upload_retention_hours=self.upload_retention_hours,
        )


def add_arguments(p: argparse.ArgumentParser) -> None:
    """A flag for every `ServeConfig` field."""
    config.add_arguments(p, ServeConfig)


def serve_config(p: argparse.ArgumentParser, args: argparse.Namespace) -> ServeConfig:
    """The `ServeConfig` of parsed flags; a bad value exits through `p.error`, as argparse does."""
    try:
        return config.resolve(ServeConfig, args)
    except ConfigError as e:
        p.error(str(e).removeprefix("config: "))


def serve(cfg: ServeConfig) -> None:
    """Build the app from `cfg` and serve it until interrupted. A bad model, collection or folder raises `VLMError`
    before anything is served."""
    from ui.memory import limit_malloc_arenas

    limit_malloc_arenas()  # before torch and Gradio start threads: keeps the server's memory flat under load
    from ui.app import build_app, close, create_state, launch

    state = create_state(
        cfg.model,
        cfg.pretrained,
        images=list(cfg.images),
        collection=cfg.collection,
        cache_dir=cfg.cache_dir,
        runs_dir=cfg.runs_dir,
        limits=cfg.limits,
        allowed_dirs=list(cfg.allow_dir),
        device=cfg.device,
        warm_up=True,  # the first visitor should not wait for Classify's and Segment's measured thresholds
    )
    demo = build_app(state, concurrency=cfg.concurrency)
    auth = tuple(cfg.auth.split(":", 1)) if cfg.auth else None
    try:
        launch(demo, state, host=cfg.host, port=cfg.port, share=cfg.share, auth=auth)
    except KeyboardInterrupt:
        pass
    finally:
        close(demo, state)
