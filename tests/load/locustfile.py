"""Load test of the celebxai API: a realistic mix of requests on real face photos, every answer
checked.

Each simulated user mostly classifies faces (``/predict``), sometimes asks for a gradient
saliency map, less often for an occlusion or a LIME map (with cheap parameters, and a target or
seed that varies, so that answers do not all come from the explanation cache), and now and then
sends a bad upload (truncated image, text, empty file) that must get its 4xx and error code.

Before users start (``test_start``) the file discovers the service instead of assuming it: the
paths and query parameters in its OpenAPI document (an explanation endpoint that the server
lacks is dropped from the mix, and said so), the classes (``/model``), and, for each photo, the
label and probabilities of one unloaded ``/predict`` (photos the service refuses unloaded, with
no face found say, are passed over). Under load:

- a 5xx or a connection error (refused, reset, timeout) is a failure;
- a valid upload must get 200, except that an explanation may be refused with 503 ``overloaded``
  and a ``Retry-After`` header (documented back-pressure): that is counted apart, under its own
  name in the statistics, and the user waits as told;
- ``/predict`` must give every photo its unloaded label and probabilities (within float noise);
  an explanation in JSON must explain the class asked for with a well-formed heatmap, and give
  a photo the same prediction every time; one in PNG must have the uploaded photo's size;
- a bad upload must get exactly its status and error code.

After the users stop (``test_stop``) it checks that nothing was lost: per endpoint, the server's
own request counter (``/metrics``) grew by exactly the number of answers the users received.
It writes a JSON report (``--report-json``) that ``tests/load/harness.py`` reads; locust exits
non-zero on any failure.

Only locust and the standard library are needed (the ``loadtest`` compose profile runs this file
in the stock locust image)::

    locust -f tests/load/locustfile.py --headless -H http://127.0.0.1:8000 -u 10 -r 5 -t 60s \
        --stop-timeout 30 --report-json report.json

Environment: ``CELEBXAI_DATA`` (face photos, default ``../shared/data`` beside the project),
``CELEBXAI_API_KEY`` (sent as ``X-API-Key`` when the service requires one).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import re
import struct
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gevent
import requests
from locust import HttpUser, between, events, task
from locust.env import Environment
from locust.exception import StopUser
from locust.stats import StatsEntry

log = logging.getLogger("celebxai.load")

API_KEY_HEADER = "X-API-Key"
REQUEST_TIMEOUT_S = 60.0
READY_TIMEOUT_S = 120.0
# Batched and single inference differ in float rounding only; anything larger is a wrong answer.
PROBABILITY_TOLERANCE = 1e-3
BACKPRESSURE = (503, "overloaded")
MAX_RETRY_AFTER_S = 5.0
# photos tried per photo wanted, where the service refuses some (no face found)
CANDIDATES_PER_PHOTO = 4
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
METRIC_LINE = re.compile(
    r"^celebxai_http_requests_total\{(?P<labels>[^}]*)\}\s+(?P<value>[0-9.e+]+)$", re.M
)
METRIC_LABEL = re.compile(r'(\w+)="([^"]*)"')

PREDICT = "/predict"


def _any_class(rng: random.Random, plan: Plan) -> str:
    return rng.choice(plan.class_ids)


def _any_seed(rng: random.Random, plan: Plan) -> int:
    return rng.randrange(1_000_000)


# Cheap, realistic query parameters per explanation endpoint; a callable is drawn anew for each
# request (another target or seed: another heatmap, not a cached one). A parameter the server's
# OpenAPI does not list for the path is left out, and logged, so the server's default applies.
EXPLANATIONS: dict[str, dict[str, Any]] = {
    "/saliency": {"method": "gradient", "target": _any_class},
    "/occlusion": {"window": 48, "stride": 48, "target": _any_class},
    "/lime": {"num_samples": 32, "seed": _any_seed},
}
FORMATS = ("json", "png", "overlay")

# Failure kinds: the first word of every failure message, and the keys of the report's tally.
SERVER_ERROR = "5xx"
CONNECTION_ERROR = "connection"
WRONG_STATUS = "wrong_status"
WRONG_ANSWER = "wrong_answer"
BAD_INPUT_MISHANDLED = "bad_input_mishandled"
LOST = "lost"


# -- locust command-line options (also LOCUST_* environment variables) -----------------------


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument(
        "--report-json",
        default="",
        env_var="LOCUST_REPORT_JSON",
        help="write the celebxai load report (checks, per-endpoint figures) to this JSON file",
    )
    parser.add_argument(
        "--photos-per-class",
        type=int,
        default=2,
        env_var="LOCUST_PHOTOS_PER_CLASS",
        help="face photos per class cycled through (default: 2)",
    )


# -- what the users send ---------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """A classification: the label and every class's probability (from /predict, or the
    prediction an explanation in JSON comes with)."""

    label: str
    probabilities: dict[str, float]
    margin: float  # top probability minus the runner-up's

    @classmethod
    def of(cls, body: dict[str, Any]) -> Answer:
        probabilities = {p["id"]: p["probability"] for p in body["probabilities"]}
        ranked = sorted(probabilities.values(), reverse=True)
        return cls(
            body["label"], probabilities, ranked[0] - (ranked[1] if len(ranked) > 1 else 0.0)
        )


@dataclass(frozen=True)
class Photo:
    """A face photo and its unloaded /predict answer."""

    path: Path
    data: bytes
    width: int
    height: int
    answer: Answer


@dataclass(frozen=True)
class BadUpload:
    kind: str
    data: bytes
    content_type: str
    status: int
    code: str


@dataclass
class Plan:
    """What ``test_start`` found out; read by every user."""

    photos: list[Photo]
    class_ids: list[str]
    bad_uploads: list[BadUpload]
    explanations: dict[str, set[str]]  # path -> the names of its query parameters


def bad_uploads(photo: bytes) -> list[BadUpload]:
    """Uploads the service must refuse, each with its status and error code (README)."""
    return [
        BadUpload("truncated PNG", photo[: len(photo) * 2 // 5], "image/png", 400, "corrupt_image"),
        BadUpload("text", b"this is not an image\n" * 8, "image/png", 415, "unsupported_format"),
        BadUpload("empty file", b"", "image/jpeg", 400, "empty_file"),
    ]


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR, or None when ``data`` is not a PNG."""
    if not data.startswith(PNG_SIGNATURE) or len(data) < 24:
        return None
    return struct.unpack(">II", data[16:24])


# -- shared state: the plan, the failure tally, the counts behind the "nothing lost" check ----


class Ledger:
    """Counts kept by all users for the report (greenlets of one process: no lock needed)."""

    def __init__(self) -> None:
        self.problems: dict[str, Counter[str]] = defaultdict(Counter)
        self.examples: dict[str, list[str]] = defaultdict(list)
        self.answered: Counter[str] = Counter()  # path -> responses received (any status)
        self.backpressure: Counter[str] = Counter()

    def problem(self, kind: str, name: str, message: str) -> None:
        self.problems[kind][name] += 1
        if len(self.examples[kind]) < 5:
            self.examples[kind].append(f"{name}: {message}")


PLAN: Plan | None = None
LEDGER = Ledger()
RUN: dict[str, Any] = {"setup_error": None, "started_at": None, "stopped_at": None}
SERVER_COUNTS_BEFORE: dict[str, float] = {}
SKIPPED: dict[str, str] = {}
EXPLANATION_REFERENCES: dict[tuple[str, Path], Answer] = {}  # (endpoint, photo) -> first answer
PASSED_OVER: Counter[str] = Counter()  # photos the service refused unloaded, by status and code
LOST_COUNTS: dict[str, dict[str, float]] = {}


def _session() -> requests.Session:
    session = requests.Session()
    if key := os.environ.get("CELEBXAI_API_KEY"):
        session.headers[API_KEY_HEADER] = key
    return session


def _wait_ready(session: requests.Session, host: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            if session.get(f"{host}/readyz", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{host}/readyz did not answer 200 within {READY_TIMEOUT_S:.0f} s")
        gevent.sleep(1)


def _query_parameters(openapi: dict[str, Any], path: str) -> set[str]:
    operation = openapi["paths"][path].get("post", {})
    known = {p["name"] for p in operation.get("parameters", []) if p.get("in") == "query"}
    if missing := sorted({"format", *EXPLANATIONS[path]} - known):
        log.warning("%s has no query parameter %s: the server's default applies", path, missing)
    return known


def _project_root() -> Path:
    return Path(__file__).resolve().parents[2]  # this file is tests/load/locustfile.py


def choose_photos(
    session: requests.Session, host: str, data_root: Path, class_ids: list[str], per_class: int
) -> list[Photo]:
    """Up to ``per_class`` photos of each class that the service classifies, each with its
    unloaded answer. A photo it refuses with a 4xx (no face found, say) is passed over, counted
    in ``PASSED_OVER`` by status and code; any other answer stops the run."""
    photos = []
    for class_id in class_ids:
        candidates = sorted((data_root / "celebs8" / class_id).glob("*.png"))
        chosen = 0
        for path in candidates[: per_class * CANDIDATES_PER_PHOTO]:
            photo = _baseline(session, host, path)
            if photo is not None:
                photos.append(photo)
                chosen += 1
            if chosen == per_class:
                break
    if not photos:
        raise RuntimeError(
            f"no face photo of the model's classes under {data_root / 'celebs8'} that the service "
            f"classifies (set CELEBXAI_DATA; passed over: {dict(PASSED_OVER) or 'none'})"
        )
    return photos


def _baseline(session: requests.Session, host: str, path: Path) -> Photo | None:
    """The photo's answer from one /predict with nothing else running (None: refused, 4xx)."""
    data = path.read_bytes()
    response = session.post(
        f"{host}{PREDICT}",
        files={"file": (path.name, data, "image/png")},
        timeout=REQUEST_TIMEOUT_S,
    )
    if 400 <= response.status_code < 500:
        PASSED_OVER[f"{response.status_code} {error_code(response)}"] += 1
        return None
    if response.status_code != 200:
        raise RuntimeError(
            f"unloaded /predict of {path} answered {response.status_code}: {response.text}"
        )
    body = response.json()
    return Photo(path, data, body["image"]["width"], body["image"]["height"], Answer.of(body))


def server_request_counts(session: requests.Session, host: str) -> dict[str, float]:
    """POST requests the server has answered, by route template (from its /metrics)."""
    counts: Counter[str] = Counter()
    for match in METRIC_LINE.finditer(session.get(f"{host}/metrics", timeout=10).text):
        labels = dict(METRIC_LABEL.findall(match["labels"]))
        if labels.get("method") == "POST":
            counts[labels["endpoint"]] += float(match["value"])
    return dict(counts)


def settled_request_counts(session: requests.Session, host: str) -> dict[str, float]:
    """``server_request_counts`` once two reads a second and a half apart agree: a service on
    Ray merges its replicas' counts as they publish them (every second), so the baseline's
    requests may show up a moment late."""
    counts = server_request_counts(session, host)
    for _attempt in range(5):
        gevent.sleep(1.5)
        again = server_request_counts(session, host)
        if again == counts:
            break
        counts = again
    return counts


def discover(environment: Environment) -> Plan:
    host = environment.host.rstrip("/")
    session = _session()
    _wait_ready(session, host)
    openapi = session.get(f"{host}/openapi.json", timeout=10).json()
    model = session.get(f"{host}/model", timeout=10)
    model.raise_for_status()
    class_ids = [item["id"] for item in model.json()["meta"]["classes"]]
    if PREDICT not in openapi["paths"]:
        raise RuntimeError(f"the server's OpenAPI document has no {PREDICT}")
    explanations = {}
    for path in EXPLANATIONS:
        if path in openapi["paths"]:
            explanations[path] = _query_parameters(openapi, path)
        else:
            SKIPPED[path] = "not in the server's OpenAPI document"
            log.warning("%s is not served: its task is skipped", path)
    data_root = Path(os.environ.get("CELEBXAI_DATA") or _project_root().parent / "shared" / "data")
    per_class = environment.parsed_options.photos_per_class if environment.parsed_options else 2
    photos = choose_photos(session, host, data_root, class_ids, per_class)
    log.info(
        "%d photos of %d classes, baseline answers recorded (passed over: %s); endpoints: %s",
        len(photos),
        len(class_ids),
        dict(PASSED_OVER) or "none",
        ", ".join([PREDICT, *explanations]),
    )
    SERVER_COUNTS_BEFORE.update(settled_request_counts(session, host))
    return Plan(photos, class_ids, bad_uploads(photos[0].data), explanations)


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_: Any) -> None:
    global PLAN, LEDGER
    # from scratch, also for a test restarted in the same process (Locust's web UI)
    LEDGER = Ledger()
    for state in (SERVER_COUNTS_BEFORE, SKIPPED, EXPLANATION_REFERENCES, PASSED_OVER, LOST_COUNTS):
        state.clear()
    RUN.update(setup_error=None, started_at=None, stopped_at=None)
    try:
        PLAN = discover(environment)
    except Exception as exc:  # the run cannot start: say why, and stop
        RUN["setup_error"] = f"{type(exc).__name__}: {exc}"
        log.error("load test setup failed: %s", RUN["setup_error"])
        environment.process_exit_code = 2
        if environment.runner is not None:
            gevent.spawn(environment.runner.quit)
        return
    FaceUser.tasks = [
        t for t in FaceUser.tasks if getattr(t, "endpoint", PREDICT) in enabled_paths()
    ]
    RUN["started_at"] = time.time()


def enabled_paths() -> set[str]:
    return {PREDICT, *(PLAN.explanations if PLAN else ())}


@events.test_stop.add_listener
def _on_test_stop(environment: Environment, **_: Any) -> None:
    if PLAN is None:
        return
    RUN["stopped_at"] = time.time()
    for path, message in lost_requests(environment.host.rstrip("/")).items():
        LEDGER.problem(LOST, path, message)
        # also a locust failure, so that locust's own error report and exit code show it
        environment.events.request.fire(
            request_type="CHECK",
            name=path,
            response_time=0,
            response_length=0,
            exception=RuntimeError(f"{LOST}: {message}"),
            context={},
        )


def lost_requests(host: str) -> dict[str, str]:
    """Endpoints whose request count on the server differs from the answers the users got."""
    session = _session()
    # The server counts a request when its response ends, a moment after the client has it.
    for _attempt in range(5):
        try:
            after = server_request_counts(session, host)
        except requests.RequestException as exc:
            return {"/metrics": f"cannot count the requests the server answered: {exc!r}"}
        LOST_COUNTS.clear()
        for path in enabled_paths():
            served = after.get(path, 0.0) - SERVER_COUNTS_BEFORE.get(path, 0.0)
            if served != LEDGER.answered[path]:
                LOST_COUNTS[path] = {"answered": LEDGER.answered[path], "served": served}
        if not LOST_COUNTS:
            return {}
        gevent.sleep(1)
    return {
        path: (
            f"server counted {counts['served']:.0f} requests, "
            f"users got {counts['answered']} answers"
        )
        for path, counts in LOST_COUNTS.items()
    }


# -- the user ----------------------------------------------------------------------------------


def endpoint(path: str):
    """Tag a task with the endpoint it needs, so tasks of endpoints the server lacks are dropped."""

    def tag(function):
        function.endpoint = path
        return function

    return tag


class FaceUser(HttpUser):
    """A client of the API: mostly predictions, some explanations, a trickle of bad uploads
    (task weights 80 /predict, 10 /saliency, 5 /occlusion, 5 /lime, 3 bad uploads)."""

    wait_time = between(0.05, 0.5)

    def on_start(self) -> None:
        if PLAN is None:  # the setup failed; the runner is quitting
            raise StopUser()
        if key := os.environ.get("CELEBXAI_API_KEY"):
            self.client.headers[API_KEY_HEADER] = key
        self.rng = random.Random()
        self.formats = itertools.cycle(FORMATS)

    def photo(self) -> Photo:
        return self.rng.choice(PLAN.photos)

    def post(
        self,
        path: str,
        name: str,
        upload: tuple[str, bytes, str],
        params: dict[str, Any] | None = None,
    ):
        return self.client.post(
            path,
            params=params,
            files={"file": upload},
            name=name,
            catch_response=True,
            timeout=REQUEST_TIMEOUT_S,
        )

    def check_transport(self, response: Any, path: str, name: str) -> bool:
        """Fail 5xx and connection errors; count answers. True when there is an answer to check."""
        if response.status_code == 0:
            fail(response, CONNECTION_ERROR, name, f"no answer: {response.error!r}")
            return False
        LEDGER.answered[path] += 1
        if response.status_code >= 500 and not is_backpressure(response):
            fail(response, SERVER_ERROR, name, f"{response.status_code} {error_code(response)}")
            return False
        return True

    @task(80)
    @endpoint(PREDICT)
    def predict(self) -> None:
        photo = self.photo()
        with self.post(PREDICT, PREDICT, (photo.path.name, photo.data, "image/png")) as response:
            if not self.check_transport(response, PREDICT, PREDICT):
                return
            if response.status_code != 200:
                fail(
                    response,
                    WRONG_STATUS,
                    PREDICT,
                    f"{response.status_code} {error_code(response)}",
                )
                return
            settle(response, PREDICT, answer_problem(response.json(), photo.answer, photo))

    @task(10)
    @endpoint("/saliency")
    def saliency(self) -> None:
        self.explain("/saliency")

    @task(5)
    @endpoint("/occlusion")
    def occlusion(self) -> None:
        self.explain("/occlusion")

    @task(5)
    @endpoint("/lime")
    def lime(self) -> None:
        self.explain("/lime")

    def explain(self, path: str) -> None:
        photo = self.photo()
        wanted = {**EXPLANATIONS[path], "format": next(self.formats)}
        params = {
            name: value(self.rng, PLAN) if callable(value) else value
            for name, value in wanted.items()
            if name in PLAN.explanations[path]
        }
        retry_after = 0.0
        with self.post(path, path, (photo.path.name, photo.data, "image/png"), params) as response:
            if not self.check_transport(response, path, path):
                return
            if is_backpressure(response):
                retry_after = accept_backpressure(response, path)
            elif response.status_code != 200:
                fail(response, WRONG_STATUS, path, f"{response.status_code} {error_code(response)}")
            else:
                settle(response, path, explanation_problem(response, path, photo, params))
        if retry_after:
            gevent.sleep(min(retry_after, MAX_RETRY_AFTER_S))

    @task(3)
    def bad_upload(self) -> None:
        bad = self.rng.choice(PLAN.bad_uploads)
        path = self.rng.choice(sorted(enabled_paths()))
        name = f"{path} (bad input)"
        retry_after = 0.0
        with self.post(path, name, ("upload.png", bad.data, bad.content_type)) as response:
            if not self.check_transport(response, path, name):
                return
            got = (response.status_code, error_code(response))
            if path != PREDICT and is_backpressure(response):
                retry_after = accept_backpressure(response, path)
            elif got != (bad.status, bad.code):
                fail(
                    response,
                    BAD_INPUT_MISHANDLED,
                    name,
                    f"{bad.kind}: expected {bad.status} {bad.code}, got {got[0]} {got[1]}",
                )
            else:
                response.success()
        if retry_after:
            gevent.sleep(min(retry_after, MAX_RETRY_AFTER_S))


# -- checks ------------------------------------------------------------------------------------


def fail(response: Any, kind: str, name: str, message: str) -> None:
    LEDGER.problem(kind, name, message)
    response.failure(f"{kind}: {message}")


def error_code(response: Any) -> str:
    try:
        return response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return "(no error code)"


def accept_backpressure(response: Any, path: str) -> float:
    """Count a refusal of an explanation as back-pressure, under its own name in the
    statistics (its latency is not an explanation's); the seconds Retry-After asks to wait."""
    response.request_meta["name"] = f"{path} (503 overloaded)"
    LEDGER.backpressure[path] += 1
    response.success()
    return float(response.headers["Retry-After"])


def is_backpressure(response: Any) -> bool:
    """503 ``overloaded`` with a Retry-After header: documented back-pressure, not a failure."""
    return (response.status_code, error_code(response)) == BACKPRESSURE and response.headers.get(
        "Retry-After", ""
    ).isdigit()


def settle(response: Any, name: str, problem: str | None) -> None:
    """Mark the answer right, or a wrong answer saying why."""
    if problem:
        fail(response, WRONG_ANSWER, name, problem)
    else:
        response.success()


def answer_problem(body: dict[str, Any], expected: Answer, photo: Photo) -> str | None:
    """How ``body``'s classification differs from ``expected`` (None: it does not)."""
    answer = Answer.of(body)
    drift = max(
        abs(answer.probabilities.get(k, -1.0) - v) for k, v in expected.probabilities.items()
    )
    if drift > PROBABILITY_TOLERANCE:
        return f"{photo.path.name}: probabilities moved by {drift:.2g} from the reference answer"
    if answer.label != expected.label and expected.margin > 2 * PROBABILITY_TOLERANCE:
        return f"{photo.path.name}: label {answer.label!r}, reference {expected.label!r}"
    return None


def explanation_problem(
    response: Any, path: str, photo: Photo, params: dict[str, Any]
) -> str | None:
    """What is wrong with an explanation of ``photo`` from ``path`` asked for with ``params``
    (None: nothing).

    json: the class explained is the one asked for, the heatmap grid has the upload's aspect
    and its declared shape, values lie in its value range, and the prediction it comes with is
    the one the endpoint gave for the photo the first time. (Not /predict's: an endpoint may
    classify another region of the image; comparing endpoints is the API tests' job.)
    png and overlay: a PNG the size of the upload.
    """
    answer_format = params.get("format", "json")
    content_type = response.headers.get("Content-Type", "")
    if answer_format != "json":
        size = png_size(response.content)
        if size is None:
            return f"format={answer_format} answered {content_type}, not a PNG"
        if size != (photo.width, photo.height):
            return (
                f"format={answer_format}: {size[0]}x{size[1]} image for a "
                f"{photo.width}x{photo.height} upload"
            )
        return None
    try:
        body = response.json()
        heatmap = body["heatmap"]
        if "target" in params and body["target"]["id"] != params["target"]:
            return f"explained {body['target']['id']!r}, asked for {params['target']!r}"
        width, height, rows = heatmap["width"], heatmap["height"], heatmap["values"]
        if len(rows) != height or any(len(row) != width for row in rows):
            return f"heatmap grid is not the declared {width}x{height}"
        if abs(width * photo.height - height * photo.width) > max(photo.width, photo.height):
            return f"{width}x{height} heatmap for a {photo.width}x{photo.height} upload"
        low, high = heatmap["value_range"]
        if not all(low <= value <= high for row in rows for value in row):
            return f"heatmap values outside its range {low}..{high}"
        # an endpoint's first answer for a photo is the reference for its later ones
        reference = EXPLANATION_REFERENCES.setdefault((path, photo.path), Answer.of(body))
        return answer_problem(body, reference, photo)
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        return f"unreadable format=json answer ({content_type}): {exc!r}"


# -- the report --------------------------------------------------------------------------------


@events.quitting.add_listener
def _write_report(environment: Environment, **_: Any) -> None:
    report = build_report(environment)
    problems = {kind: sum(names.values()) for kind, names in report["problems"].items()}
    log.info(
        "checks: %s; 503 back-pressure: %s", problems or "no problems", report["backpressure"] or 0
    )
    options = environment.parsed_options
    if not options or not options.report_json:
        return
    target = Path(options.report_json)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(report, indent=2))


def build_report(environment: Environment) -> dict[str, Any]:
    started, stopped = RUN["started_at"], RUN["stopped_at"] or time.time()
    duration = (stopped - started) if started else 0.0
    entries = sorted(environment.stats.entries.values(), key=lambda e: (e.name, e.method))
    # every explanation answered (not refused with 503, not a bad upload) as one distribution:
    # the p95 of "an explanation" under this mix, whichever method was asked for
    explanations = StatsEntry(environment.stats, "explanations", "POST")
    for entry in entries:
        if entry.name in EXPLANATIONS and entry.method == "POST":  # not the lost-check's
            explanations.extend(entry)
    return {
        "host": environment.host,
        "users": environment.runner.target_user_count if environment.runner else None,
        "setup_error": RUN["setup_error"],
        "started_at": started,
        "stopped_at": stopped,
        "duration_s": duration,
        "photos": len(PLAN.photos) if PLAN else 0,
        "photos_passed_over": dict(PASSED_OVER),
        "endpoints_run": sorted(enabled_paths()) if PLAN else [],
        "endpoints_skipped": SKIPPED,
        "endpoints": [entry_figures(entry, duration) for entry in entries],
        "explanations": entry_figures(explanations, duration),
        "problems": {kind: dict(names) for kind, names in LEDGER.problems.items()},
        "problem_examples": dict(LEDGER.examples),
        "backpressure": dict(LEDGER.backpressure),
        "answered": dict(LEDGER.answered),
        "lost": LOST_COUNTS,
        "exceptions": [
            {"error": error["msg"], "count": error["count"]}
            for error in (environment.runner.exceptions.values() if environment.runner else ())
        ],
    }


def entry_figures(entry: StatsEntry, duration: float) -> dict[str, Any]:
    """One statistics entry's counts, rate (per second of the run) and latencies (ms)."""
    return {
        "name": entry.name,
        "method": entry.method,
        "requests": entry.num_requests,
        "failures": entry.num_failures,
        "rps": entry.num_requests / duration if duration else 0.0,
        "p50_ms": entry.get_response_time_percentile(0.50),
        "p95_ms": entry.get_response_time_percentile(0.95),
        "p99_ms": entry.get_response_time_percentile(0.99),
        "avg_ms": entry.avg_response_time,
        "max_ms": entry.max_response_time,
    }
