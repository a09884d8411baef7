"""How large the HTML report of a LLaVA-1.5-sized attention run is, and how soon it paints.

Builds synthetic `attend` run folders through the real writers (`vistrace.runs.attend_io.save_instance`
with `StageCapture`s, `log.json` as the runner writes it) at LLaVA-1.5's geometry — 576 image
features on a 24 × 24 grid over the 336-px square the processor pads a 640 × 480 photograph to
(`LlavaAdapter.geometry` with LLaVA-1.5's image processor), 32 layers — with three stages per
instance (`initial`, `feedback_1`, `revision_1`) of about 60 tokens each and a photo-like image;
writes the report with the default settings (`write_report(runs, out)`); prints its size, what the
maps and the images take of it, and what headless Chromium measures when it opens the page.

Two kinds of attention:

- `realistic`: attention made the way a transformer makes it. Per instance, image features over the
  grid (smooth random fields at several scales, a few object blobs, per-patch noise) and 2–4
  "sink" patches that every layer's keys single out (the high-norm visual tokens that take a large
  share of LLaVA's attention); per layer and head a fixed projection to keys (the same for every
  instance, like model weights); per generated token a query that drifts slowly (AR(1), ρ = 0.92
  per token) around a per-head base, towards a slowly changing mixture of the objects, with a sink
  component strongest in the middle layers; softmax over the 576 features with a sharpness that
  is highest in the middle layers, times the share of the row on the image (falling with depth,
  log-normal jitter). Maps that look like attention maps: bright sinks, the objects fainter, noise.
- `uniform`: every value independent and uniform: incompressible, the worst case.

The captures keep `--heads` heads (4 by default, not LLaVA's 32: at 32 the run folder would be
21 GB). The report stores per-token maps pooled over heads, so the number of heads changes only how
smooth the pooled maps are, not how many values they hold (docs/report.md gives both).

In Chromium (`/usr/bin/chromium`, headless, driven over the DevTools protocol on a pipe, a fresh
profile per load) the page is opened and, nothing clicked, these are read: `first-paint` and
`first-contentful-paint` (Paint Timing: the page's title, painted while the data is still being
parsed), `ready_ms` (the page's own mark: data parsed, views built) and the last Largest
Contentful Paint (the views painted: the image, the text). Then the page's self-test runs
(`VT.selftest`): the time from a click on the first token to its overlay drawn, the time to decode
one stage's maps from their base64 (inflate + bit planes), and any script error or blocked load.
Medians of `--repeats` loads; paint and ready times count from the start of navigation.

    python benchmarks/report_size.py [--instances 100] [--maps realistic,uniform] [--heads 4]
                                     [--repeats 3] [--layer-groups G] [--bits B] [--pools P,...]
                                     [--threads 1] [--tiny] [--no-browser] [--json OUT] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from PIL import Image

from vistrace.adapters.base import Geometry
from vistrace.adapters.llava import LlavaAdapter
from vistrace.capture.generate import StageCapture
from vistrace.report import write_report
from vistrace.runs.attend_io import LOG_FILE, save_instance, write_json

CHROMIUM = Path("/usr/bin/chromium")
GRID = 24  # LLaVA-1.5: 336-px input, 14-px patches
STAGES = ("initial", "feedback_1", "revision_1")
DATA_RE = re.compile(r'<script type="application/json" id="vistrace-data">(.*?)</script>', re.S)
_VOCABULARY = (
    "the a of on in to and is with there are two three red blue green small large man woman dog cat "
    "table plate window car street sign left right near behind front wearing holding looking sitting "
    "standing white black wooden glass picture image shows appears background answer yes no correct"
)
WORDS = tuple(_VOCABULARY.split(" "))


@dataclass(frozen=True)
class Setup:
    instances: int
    layers: int
    heads: int
    tokens: int  # per stage, about
    image_size: tuple[int, int]


FULL = Setup(instances=100, layers=32, heads=4, tokens=60, image_size=(640, 480))
TINY = Setup(instances=3, layers=4, heads=2, tokens=8, image_size=(96, 72))


def llava_geometry(image_size: tuple[int, int]) -> Geometry:
    """LLaVA-1.5's feature boxes for an image of `image_size`: pad to a square, resize to 336, centre
    crop, 14-px patches (the adapter's own code, on LLaVA-1.5's image processor settings)."""
    from transformers import LlavaImageProcessorPil

    processor = SimpleNamespace(
        image_processor=LlavaImageProcessorPil(
            size={"shortest_edge": 336},
            crop_size={"height": 336, "width": 336},
            do_center_crop=True,
            do_pad=True,
        )
    )
    config = SimpleNamespace(
        vision_config=SimpleNamespace(patch_size=14), vision_feature_select_strategy="default"
    )
    geometry = LlavaAdapter().geometry(SimpleNamespace(config=config), processor, image_size)
    if geometry.num_features != GRID * GRID:
        raise RuntimeError(f"LLaVA-1.5 geometry has {geometry.num_features} features, expected {GRID * GRID}")
    return geometry


def _smooth(rng: np.random.Generator, shape: tuple[int, ...], sigma: float, power: float = 0.0) -> np.ndarray:
    """White noise over the last two axes low-passed by a Gaussian of `sigma` cells (or with a
    1/f**power amplitude spectrum when `power` > 0), each field of zero mean and unit variance."""
    noise = rng.standard_normal(shape)
    fy = np.fft.fftfreq(shape[-2])[:, None]
    fx = np.fft.fftfreq(shape[-1])[None, :]
    if power > 0:
        radius = np.hypot(fx, fy)
        radius[0, 0] = 1.0
        kernel = radius**-power
        kernel[0, 0] = 0.0
    else:
        kernel = np.exp(-2 * (np.pi * sigma) ** 2 * (fx**2 + fy**2))
    out = np.real(np.fft.ifft2(np.fft.fft2(noise) * kernel))
    out -= out.mean(axis=(-2, -1), keepdims=True)
    return out / (out.std(axis=(-2, -1), keepdims=True) + 1e-12)


def photo(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A photo-like RGB image: a 1/f**1.2 amplitude spectrum (natural images' falloff), correlated
    channels, a few flat-coloured objects with sharp edges and mild sensor noise."""
    width, height = size
    shared = _smooth(rng, (height, width), 0, power=1.2)
    own = _smooth(rng, (3, height, width), 0, power=1.2)
    image = np.stack([rng.normal(1, 0.25) * shared + 0.5 * own[c] for c in range(3)], axis=-1)
    image = image * 40 + rng.uniform(80, 170, 3)
    yy, xx = np.mgrid[0:height, 0:width]
    for _ in range(rng.integers(2, 5)):
        cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
        ry, rx = rng.uniform(0.05, 0.2) * height, rng.uniform(0.05, 0.2) * width
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        image[inside] = 0.3 * image[inside] + 0.7 * rng.uniform(0, 255, 3)
    image += rng.normal(0, 2.0, image.shape)
    return Image.fromarray(image.clip(0, 255).astype(np.uint8))


class RealisticAttention:
    """Attention rows made as a transformer makes them (see the module docstring)."""

    DIM, HEAD_DIM = 32, 16

    def __init__(self, rng: np.random.Generator, layers: int, heads: int) -> None:
        self.rng = rng
        self.layers, self.heads = layers, heads
        # The "model": per layer and head a projection of image features to keys, one sink direction.
        self.weights = (
            rng.standard_normal((layers, heads, self.DIM, self.HEAD_DIM)) / np.sqrt(self.DIM)
        ).astype(np.float32)
        sink = rng.standard_normal(self.DIM)
        self.sink = (sink / np.linalg.norm(sink)).astype(np.float32)
        depth = np.linspace(0, 1, layers)
        self.sharpness = (1.0 + 2.5 * np.sin(np.pi * depth)).astype(np.float32)
        self.sink_gain = (3.0 * np.exp(-(((depth - 0.45) / 0.3) ** 2))).astype(np.float32)
        self.image_share = (0.45 - 0.35 * depth).astype(np.float32)

    def instance(self) -> tuple[np.ndarray, np.ndarray]:
        """Keys (layers, heads, N, head_dim) of one image and its objects' feature directions."""
        rng, dim = self.rng, self.DIM
        fields = sum(w * _smooth(rng, (dim, GRID, GRID), s) for s, w in ((1.0, 0.4), (2.5, 0.7), (5.0, 0.7)))
        yy, xx = np.mgrid[0:GRID, 0:GRID]
        objects = []
        for _ in range(rng.integers(2, 5)):
            cy, cx = rng.uniform(3, GRID - 3, 2)
            radius = rng.uniform(2, 6)
            mask = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))
            direction = rng.standard_normal(dim) * 1.5
            fields = fields + mask[None] * direction[:, None, None]
            objects.append(direction)
        features = np.asarray(fields).reshape(dim, GRID * GRID).T + 0.3 * rng.standard_normal(
            (GRID * GRID, dim)
        )
        sinks = rng.choice(GRID * GRID, int(rng.integers(2, 5)), replace=False)
        features[sinks] += 6.0 * self.sink
        keys = np.einsum("nD,lhDd->lhnd", features.astype(np.float32), self.weights)
        return keys, np.asarray(objects, dtype=np.float32)

    def stage(self, keys: np.ndarray, objects: np.ndarray, tokens: int) -> torch.Tensor:
        """(tokens, layers, heads, N) float16 attention of one generation on the image."""
        rng, shape = self.rng, (self.layers, self.heads, self.HEAD_DIM)
        base = rng.standard_normal(shape).astype(np.float32)
        drift = rng.standard_normal(shape).astype(np.float32)
        focus = rng.standard_normal(len(objects))
        sink_query = np.einsum("D,lhDd->lhd", self.sink, self.weights) * self.sink_gain[:, None, None]
        object_queries = np.einsum("oD,lhDd->olhd", objects, self.weights)
        rho = 0.92
        queries = np.empty((tokens, *shape), dtype=np.float32)
        for t in range(tokens):
            drift = rho * drift + np.sqrt(1 - rho**2) * rng.standard_normal(shape).astype(np.float32)
            focus = 0.85 * focus + 0.5 * rng.standard_normal(len(objects))
            mixture = np.exp(focus) / np.exp(focus).sum()
            queries[t] = (
                0.5 * base
                + 0.6 * drift
                + 0.7 * np.einsum("o,olhd->lhd", mixture, object_queries)
                + sink_query
            )
        logits = torch.einsum("tlhd,lhnd->tlhn", torch.from_numpy(queries), torch.from_numpy(keys))
        logits *= torch.from_numpy(self.sharpness)[None, :, None, None] / np.sqrt(self.HEAD_DIM)
        share = self.image_share[None, :, None, None] * np.exp(
            0.3 * rng.standard_normal((tokens, *shape[:2], 1))
        )
        return (torch.softmax(logits, dim=-1) * torch.from_numpy(share.astype(np.float32))).half()


def uniform_stage(rng: np.random.Generator, tokens: int, layers: int, heads: int) -> torch.Tensor:
    """(tokens, layers, heads, N) float16 values, each independent and uniform in [0, 1/N)."""
    values = rng.random((tokens, layers, heads, GRID * GRID), dtype=np.float32) / (GRID * GRID)
    return torch.from_numpy(values).half()


def _stage_capture(
    rng: np.random.Generator, attention: torch.Tensor, geometry: Geometry, layers: int
) -> StageCapture:
    tokens = attention.shape[0]
    words = [WORDS[i] for i in rng.integers(0, len(WORDS), tokens - 1)]
    pieces = tuple([(" " if i else "") + w for i, w in enumerate(words)] + ["</s>"])
    return StageCapture(
        prompt_text="USER: <image>\nsynthetic question ASSISTANT:",
        input_ids=tuple(range(1, 40)) + (32000,) * (GRID * GRID) + tuple(range(40, 60)),
        output_ids=(*(int(i) for i in rng.integers(3, 32000, tokens - 1)), 2),
        output_tokens=(*("▁" + w for w in words), "</s>"),
        text="".join(pieces[:-1]).strip(),
        layers=tuple(range(layers)),
        image_attention=attention,
        geometry=geometry,
        ends_with_eos=True,
        output_pieces=pieces,
    )


def build_run(folder: Path, setup: Setup, maps: str, seed: int = 0) -> Path:
    """A synthetic `attend` run of `setup.instances` finished instances in `folder` (see above)."""
    rng = np.random.default_rng(seed)
    geometry = llava_geometry(setup.image_size)
    model = RealisticAttention(rng, setup.layers, setup.heads)
    config = {
        "model": f"synthetic LLaVA-1.5 geometry ({maps} attention)",
        "volcano": True,
        "max_rounds": 1,
        "benchmark": {**setup.__dict__, "maps": maps, "seed": seed},
    }
    entries = []
    for index in range(setup.instances):
        keys, objects = model.instance() if maps == "realistic" else (None, None)
        stages = {}
        for name in STAGES:
            tokens = max(2, round(setup.tokens * rng.uniform(0.8, 1.2)))
            if maps == "realistic":
                assert keys is not None and objects is not None
                attention = model.stage(keys, objects, tokens)
            else:
                attention = uniform_stage(rng, tokens, setup.layers, setup.heads)
            stages[name] = _stage_capture(rng, attention, geometry, setup.layers)
        record = {
            "index": index,
            "image_id": f"synthetic{index:04d}",
            "image_src": f"synthetic{index:04d}.jpg",
            "question": f"What is shown in picture {index}?",
            "gold_answer": "a synthetic scene",
        }
        adopted = 1 if rng.random() < 0.3 else None
        directory = f"{index}_synthetic{index:04d}"
        entry = {
            **record,
            "dir": directory,
            "outputs": [stages["initial"].text] + ([stages["revision_1"].text] if adopted else []),
            "feedback": [stages["feedback_1"].text],
            "revision": [stages["revision_1"].text],
            "decisions": ["B" if adopted else "A"],
            "choices": ["B" if adopted else "A"],
            "stop_iter": 1,
            "adopted_round": adopted,
            "stop_reason": "max_rounds" if adopted else "kept",
            "stages": list(STAGES),
        }
        image = photo(rng, setup.image_size)
        save_instance(folder / directory, stages, {"instance": record, "config": config, "log": entry}, image)
        entries.append(entry)
    write_json(folder / LOG_FILE, {"config": config, "entries": entries})
    return folder


def _built(run: Path, setup: Setup, maps: str) -> bool:
    """Whether `run` holds the run :func:`build_run` makes of `setup` and `maps` (kept by `--keep`)."""
    log = run / LOG_FILE
    if not log.is_file():
        return False
    config = json.loads(log.read_text(encoding="utf-8")).get("config", {})
    wanted = json.loads(json.dumps({**setup.__dict__, "maps": maps, "seed": 0}))
    return bool(config.get("benchmark") == wanted)


def page_parts(page: Path) -> dict[str, float]:
    """MB of the page, of its per-token maps (base64) and of its embedded images."""
    text = page.read_text(encoding="utf-8")
    match = DATA_RE.search(text)
    if match is None:
        raise RuntimeError(f"{page}: no data block")
    data = json.loads(match.group(1))
    maps = images = 0
    for run in data["runs"]:
        for instance in run.get("instances", []):
            images += len(instance.get("image") or "")
            for stage in instance["stages"].values():
                packed = stage["maps"]
                if "data" in packed:
                    maps += len(packed["data"])  # the scales are inside
                else:  # one entry per head pooling (and layer group), each with its data and scales
                    nested = [packed, *stage.get("groups", {}).values()]
                    maps += sum(
                        len(p["data"]) + len(json.dumps(p["scale"])) for g in nested for p in g.values()
                    )
    return {"file_mb": page.stat().st_size / 1e6, "maps_mb": maps / 1e6, "images_mb": images / 1e6}


class DevTools:
    """Headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`:
    NUL-terminated JSON messages, the browser reading fd 3 and writing fd 4)."""

    def __init__(self, profile: Path) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire() -> None:
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        self.process = subprocess.Popen(
            [
                str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--disable-component-update", "--no-first-run",
                f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank",
            ],
            pass_fds=(3, 4), preexec_fn=wire, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._id = 0
        self.session: str | None = None

    def send(self, method: str, params: dict[str, Any] | None = None, timeout: float = 60) -> dict[str, Any]:
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if self.session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        reply = self.wait(lambda m: m.get("id") == self._id, timeout)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    def wait(self, wanted: Callable[[dict[str, Any]], bool], timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message: dict[str, Any] = json.loads(raw)
                if wanted(message):
                    return message
            if time.monotonic() > deadline:
                raise TimeoutError("no answer from Chromium")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buffer += chunk

    def open(self, url: str) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.send("Page.enable")
        self.send("Page.navigate", {"url": url})

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (awaited when it is a Promise)."""
        params = {"expression": expression, "returnByValue": True, "awaitPromise": True}
        return self.send("Runtime.evaluate", params)["result"].get("value")

    def close(self) -> None:
        try:
            self.session = None
            self.send("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


# Once the page's views are built, paint timings as [name, ms] pairs: first-paint and
# first-contentful-paint (Paint Timing) and the last Largest Contentful Paint candidate seen within
# 1.5 s (the largest image or text block painted: the views, once they are drawn).
PAINTS = """new Promise(function (done) {
  var last = null;
  new PerformanceObserver(function (list) {
    var entries = list.getEntries(); last = entries[entries.length - 1].startTime;
  }).observe({type: 'largest-contentful-paint', buffered: true});
  setTimeout(function () {
    var out = performance.getEntriesByType('paint').map(function (e) { return [e.name, e.startTime]; });
    done(out.concat([['largest-contentful-paint', last]]));
  }, 1500);
})"""
RESULT = (
    "(function () { var r = document.getElementById('selftest-result'); return r ? r.textContent : null; })()"
)


def _poll(browser: DevTools, expression: str, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = browser.evaluate(expression)
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {timeout} s")
        time.sleep(0.05)


def measure_page(page: Path, timeout: float = 120) -> dict[str, Any]:
    """One load of `page` in a fresh headless Chromium: paint timings and `ready_ms` (nothing
    clicked: Largest Contentful Paint stops at the first input), then the self-test (`VT.selftest`:
    the time from a click to the first overlay, the page's errors)."""
    with tempfile.TemporaryDirectory(prefix="vistrace-chromium-") as profile:
        browser = DevTools(Path(profile))
        try:
            browser.open(page.resolve().as_uri())
            ready = _poll(
                browser, "window.VT && VT.readyMs !== undefined ? VT.readyMs : null", timeout, "views"
            )
            paint = dict(browser.evaluate(PAINTS))
            browser.evaluate("VT.selftest(), true")
            result = _poll(browser, RESULT, timeout, "self-test result")
        finally:
            browser.close()
    selftest = json.loads(result)
    overlays = [o for o in selftest.get("overlays", []) if o]
    return {
        "first_paint_ms": paint.get("first-paint"),
        "first_contentful_paint_ms": paint.get("first-contentful-paint"),
        "largest_contentful_paint_ms": paint.get("largest-contentful-paint"),
        "ready_ms": ready,
        "click_to_map_ms": overlays[0].get("map_ms") if overlays else None,
        "decode_stage_ms": selftest.get("decode_ms"),
        "overlay_drawn": bool(overlays and overlays[0].get("after")),
        "errors": selftest.get("errors", []),
    }


TIMINGS = (
    "first_paint_ms",
    "first_contentful_paint_ms",
    "ready_ms",
    "largest_contentful_paint_ms",
    "click_to_map_ms",
    "decode_stage_ms",
)


def _median(values: list[Any]) -> float | None:
    numbers = [float(v) for v in values if v is not None]
    return statistics.median(numbers) if numbers else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--instances", type=int, default=FULL.instances, help="attention instances (default 100)"
    )
    parser.add_argument("--maps", default="realistic,uniform", help="attention kinds: realistic, uniform")
    parser.add_argument(
        "--heads", type=int, default=FULL.heads, help="heads captured (default 4; LLaVA has 32)"
    )
    parser.add_argument(
        "--tokens", type=int, default=FULL.tokens, help="tokens per stage, about (default 60)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="page loads in Chromium per report (median)")
    parser.add_argument(
        "--layer-groups", type=int, default=None, help="write_report(layer_groups=); default: its own"
    )
    parser.add_argument("--bits", type=int, default=None, help="write_report(bits=); default: its own")
    parser.add_argument(
        "--pools", default=None, help="comma-separated write_report(pools=); default: its own"
    )
    parser.add_argument(
        "--tiny", action="store_true", help="3 small instances, 4 layers, 8 tokens: seconds, for tests"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--no-browser", action="store_true", help="measure the file only")
    parser.add_argument("--json", type=Path, default=None, help="write every number to this file")
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="keep the run folders and reports here (and reuse runs kept there)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    setup = (
        TINY if args.tiny else Setup(args.instances, FULL.layers, args.heads, args.tokens, FULL.image_size)
    )
    kinds = [k.strip() for k in args.maps.split(",") if k.strip()]
    unknown = sorted(set(kinds) - {"realistic", "uniform"})
    if unknown:
        parser.error(f"--maps: unknown kind {', '.join(unknown)}; choose realistic, uniform")
    options: dict[str, Any] = {}
    if args.layer_groups is not None:
        options["layer_groups"] = args.layer_groups
    if args.bits is not None:
        options["bits"] = args.bits
    if args.pools:
        options["pools"] = [p.strip() for p in args.pools.split(",") if p.strip()]
    browser = not args.no_browser and CHROMIUM.is_file()
    if not args.no_browser and not browser:
        print(f"{CHROMIUM} is absent: the page is measured as a file only (apt-get install -y chromium)")
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="vistrace-report-size-"))
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for kind in kinds:
            run = root / f"attend_{kind}"
            started = time.perf_counter()
            if not _built(run, setup, kind):
                shutil.rmtree(run, ignore_errors=True)
                run.mkdir(parents=True)
                build_run(run, setup, kind)
            built = time.perf_counter() - started
            started = time.perf_counter()
            page = write_report([run], root / f"report_{kind}.html", **options)
            written = time.perf_counter() - started
            row: dict[str, Any] = {
                "maps": kind,
                "instances": setup.instances,
                "build_s": round(built, 1),
                "write_s": round(written, 1),
                **{k: round(v, 2) for k, v in page_parts(page).items()},
            }
            if not args.keep:
                shutil.rmtree(run)  # gigabytes of float16 tensors
            if browser:
                loads = [measure_page(page) for _ in range(max(1, args.repeats))]
                for key in TIMINGS:
                    row[key] = _median([load[key] for load in loads])
                row["overlay_drawn"] = all(load["overlay_drawn"] for load in loads)
                row["errors"] = sorted({e for load in loads for e in load["errors"]})
            rows.append(row)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}"
    print(
        f"report of {setup.instances} attention instances: {GRID * GRID} features, {setup.layers} layers, "
        f"{setup.heads} heads captured, 3 stages of ~{setup.tokens} tokens, {setup.image_size[0]}x"
        f"{setup.image_size[1]} photo-like images; write_report options: {options or 'defaults'}; {machine}"
    )
    print(
        "| maps | file MB | maps MB | images MB | write s | first paint ms | first contentful paint ms "
        "| ready ms | largest contentful paint ms | click → map ms | decode a stage ms |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        cells = [row.get(k) for k in TIMINGS]
        timing = " | ".join("–" if c is None else f"{c:.0f}" for c in cells)
        print(
            f"| {row['maps']} | {row['file_mb']:.2f} | {row['maps_mb']:.2f} | {row['images_mb']:.2f} "
            f"| {row['write_s']:.1f} | {timing} |"
        )
        if row.get("errors"):
            print(f"  page errors ({row['maps']}): {row['errors']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {"setup": setup.__dict__, "options": options, "machine": machine, "rows": rows}, indent=2
            ),
            encoding="utf-8",
        )
    failed = any(row.get("errors") or (browser and not row.get("overlay_drawn")) for row in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
