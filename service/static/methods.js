// The explanation methods, as the service lists them (GET /explain): the page makes one panel
// per method, its parameter fields from the method's JSON Schema, its legend from whether the
// method's map is signed. Nothing here names a method: a method added to the service appears.

import { getJson } from "./api.js";
import { fieldsOf } from "./schema.js";

/** ``{methods, rule}``: ``methods`` ``[{name, title, shows, signed, units, anytime, quality,
 * sanity, fields}]`` in the service's order (``fields``: see ``fieldsOf``), those the served
 * bundle can run (``available``); ``rule``: how an answer's quality verdict is decided, in words. */
export async function loadMethods() {
  const { methods, quality_rule: rule } = await getJson("/explain");
  const runnable = methods.filter((method) => method.available !== false);
  return { methods: runnable.map((method) => ({ ...method, fields: fieldsOf(method.parameters) })), rule };
}
