// The service's public HTTP API, as the page uses it: the same endpoints, multipart field and
// X-API-Key header as curl users. Every failure becomes an ApiError with the API's error code.
// Requests that run a model carry ``model=``: the model the page has chosen (models.js), or the
// one a caller names (the compare view asks each of its models).

export const API_KEY_HEADER = "X-API-Key";
const KEY_STORAGE = "celebxai.apiKey";
const MODEL_PARAM = "model";

export class ApiError extends Error {
  constructor(code, message, status = 0) {
    super(message);
    this.code = code;
    this.status = status;
  }
}

export const apiKey = {
  get: () => sessionStorage.getItem(KEY_STORAGE) || "",
  set: (value) =>
    value ? sessionStorage.setItem(KEY_STORAGE, value) : sessionStorage.removeItem(KEY_STORAGE),
};

/** The model every request asks for unless it names its own: "" (the service's default, no
 * ``model=`` sent) until the page chooses one. ``onChange(listener)``: ``listener(name,
 * previous)`` after each change. */
export const chosenModel = (() => {
  let name = "";
  const listeners = [];
  return {
    get: () => name,
    set(value) {
      if (value === name) return;
      const previous = name;
      name = value;
      for (const listener of listeners) listener(name, previous);
    },
    onChange: (listener) => listeners.push(listener),
  };
})();

/** ``path`` with ``model=`` set to ``model`` (default: the chosen model), unless the path names
 * one already or there is none to name. */
export function withModel(path, model = chosenModel.get()) {
  const url = new URL(path, location.origin);
  if (!model || url.searchParams.has(MODEL_PARAM)) return path;
  url.searchParams.set(MODEL_PARAM, model);
  return `${url.pathname}${url.search}`;
}

function headers() {
  const key = apiKey.get();
  return key ? { [API_KEY_HEADER]: key } : {};
}

/** ``fetch`` with the API key; resolves to the Response when it is a success, else throws the
 * ApiError (for callers that need the headers or the body in another form). */
export async function send(path, init) {
  let response;
  try {
    response = await fetch(path, { ...init, headers: { ...headers(), ...init.headers } });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError("network_error", "the service did not answer (is it running?)");
  }
  if (response.ok) return response;
  throw await errorOf(response);
}

async function errorOf(response) {
  try {
    const body = await response.json();
    if (body?.error?.code) return new ApiError(body.error.code, body.error.message, response.status);
  } catch {
    // not the API's JSON error shape: fall through to the status line
  }
  return new ApiError(`http_${response.status}`, response.statusText || "request failed", response.status);
}

/** GET ``path`` of ``model`` (default: the chosen one; null: none named, for what is not a
 * model's: readiness, the list of models) and parse its JSON body. */
export async function getJson(path, { signal, model } = {}) {
  const response = await send(model === null ? path : withModel(path, model), { method: "GET", signal });
  return response.json();
}

/** POST ``file`` as multipart field ``file`` to ``path`` with query ``params``, to ``model``
 * (default: the chosen one); resolves to the parsed JSON (``as: "json"``), the body as a Blob
 * (``as: "blob"``, e.g. a PNG) or the Response itself (``as: "response"``, to read headers too). */
export async function postImage(path, file, { params = {}, as = "json", signal, model } = {}) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== "" && value !== undefined && value !== null) query.set(name, String(value));
  }
  const body = new FormData();
  body.append("file", file, file.name || "photo");
  const url = withModel(query.size ? `${path}?${query}` : path, model);
  const response = await send(url, { method: "POST", body, signal });
  if (as === "response") return response;
  return as === "blob" ? response.blob() : response.json();
}

/** The events of job ``id`` (GET /jobs/{id}/events, Server-Sent Events), parsed, until the
 * stream ends. Read with fetch rather than EventSource, which cannot send the API key. */
export async function* jobEvents(id, { signal } = {}) {
  const response = await send(`/jobs/${encodeURIComponent(id)}/events`, { method: "GET", signal });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    for (let end = buffer.indexOf("\n\n"); end >= 0; end = buffer.indexOf("\n\n")) {
      const lines = buffer.slice(0, end).split("\n");
      buffer = buffer.slice(end + 2);
      const data = lines.filter((line) => line.startsWith("data:")).map((line) => line.slice(5));
      if (data.length) yield JSON.parse(data.join("\n"));
    }
  }
}

/** Cancel job ``id`` (DELETE /jobs/{id}); a job already gone is fine. */
export async function cancelJob(id) {
  try {
    await send(`/jobs/${encodeURIComponent(id)}`, { method: "DELETE" });
  } catch {
    // finished and expired, or the service is gone: nothing left to cancel
  }
}

const PLAIN_WORDS = {
  unsupported_format:
    "That file is not a photo the service can read. Please choose a JPEG, PNG, WebP or BMP image.",
  corrupt_image: "The photo seems damaged or incomplete: it could not be decoded.",
  empty_file: "That file is empty.",
  file_too_large: "That file is too large for this service.",
  too_many_pixels: "That photo has too many pixels. Please choose a smaller one.",
  image_too_small: "That photo is too small to recognise a face in.",
  missing_api_key: "This service needs an API key. Enter it under “API key” at the top, then try again.",
  invalid_api_key: "The API key was not accepted. Check it under “API key” at the top.",
  not_ready: "The model is not ready yet (still loading, or it failed to load). Try again in a moment.",
  overloaded: "The service is busy right now. Try again in a moment.",
  validation_error: "One of the settings is not accepted.",
  unknown_class: "The model has no such class.",
  unknown_layer: "The model has no such layer.",
  unknown_method: "The service does not offer that explanation method.",
  unknown_model: "The service does not serve that model (any more).",
  bad_request: "The service could not read the request.",
  not_found: "This service does not offer that endpoint (is it an older version?).",
  network_error: "Could not reach the service. Is it still running?",
  too_many_jobs: "Too many long explanations are running for this key. Wait for one to finish, then try again.",
  unknown_job: "That explanation is no longer kept by the service. Run it again.",
  job_lost: "The service stopped working on that explanation. Run it again.",
  result_too_large: "That explanation's picture is too large for the service to keep. Try a smaller photo.",
  too_costly: "Those settings ask for more work than this service allows for one explanation. Lower them.",
  too_many_streams: "Too many pages are watching explanations for this key. Close one, then try again.",
  cancelled: "Cancelled.",
};

/** ``{summary, detail}``: what went wrong in plain words, and the API's own message and code. */
export function describeError(error) {
  if (!(error instanceof ApiError)) {
    return { summary: "Something went wrong in the page.", detail: String(error?.message ?? error) };
  }
  const summary = PLAIN_WORDS[error.code] ?? "The service could not do that.";
  return { summary, detail: `${error.message} (${error.code})` };
}
