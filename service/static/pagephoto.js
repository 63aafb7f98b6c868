// The photo the first tab shows (#photo), for the other views (insight.js, compare.js): they
// follow it without app.js knowing them.

const photo = document.getElementById("photo");

/** ``listener(url)`` each time the first tab shows another photo (``url``: its object URL). */
export function onPagePhoto(listener) {
  new MutationObserver(() => listener(photo.getAttribute("src"))).observe(photo, {
    attributes: true,
    attributeFilter: ["src"],
  });
}

/** The bytes of the photo at ``url`` (an object URL of the first tab's), or null where it is
 * gone (the page has moved on to another photo). */
export async function photoBlob(url) {
  try {
    return await (await fetch(url)).blob();
  } catch {
    return null;
  }
}
