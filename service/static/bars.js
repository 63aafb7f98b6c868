// Class probabilities as bars, most probable first: the prediction card's (each a button that
// explains its class) and the compare view's (each model's top classes, to read only).

/** ``<li>`` items of bars for ``probabilities`` (``/predict``'s ``[{id, name, probability}]``),
 * the ``predicted`` class's in bold; the first ``top`` only; with ``onChoose(id)`` each bar is a
 * button that calls it. */
export function probabilityBars(probabilities, predicted, { top = Infinity, onChoose = null } = {}) {
  return probabilities.slice(0, top).map((entry) => {
    const item = document.createElement("li");
    const bar = document.createElement(onChoose ? "button" : "div");
    bar.className = "bar";
    bar.dataset.classId = entry.id;
    if (entry.id === predicted) bar.classList.add("predicted");
    const name = Object.assign(document.createElement("span"), { className: "name", textContent: entry.name });
    const track = Object.assign(document.createElement("span"), { className: "track" });
    const fill = Object.assign(document.createElement("span"), { className: "fill" });
    fill.style.width = `${(entry.probability * 100).toFixed(2)}%`;
    track.append(fill);
    const value = Object.assign(document.createElement("span"), { className: "value", textContent: percent(entry.probability) });
    bar.append(name, track, value);
    if (onChoose) {
      bar.type = "button";
      bar.setAttribute("aria-pressed", "false");
      bar.title = `Explain ${entry.name}`;
      bar.addEventListener("click", () => onChoose(entry.id));
    }
    item.append(bar);
    return item;
  });
}

/** A probability as a percentage for people: "97.3%", "<0.1%". */
export function percent(probability) {
  const value = probability * 100;
  return value > 0 && value < 0.1 ? "<0.1%" : `${value.toFixed(1)}%`;
}
