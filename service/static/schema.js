// A JSON Schema of query parameters (a method's ``parameters`` in GET /explain) as form
// fields: types, bounds, choices and defaults come from the service, so the page follows it.

/** ``Map(name -> {label, type, minimum, maximum, maxLength, default, choices, description})``
 * for the properties of ``schema``, in their order. */
export function fieldsOf(schema) {
  const fields = new Map();
  for (const [name, property] of Object.entries(schema?.properties ?? {})) {
    const resolved = resolve(schema, property);
    fields.set(name, {
      label: property.title ?? name,
      type: resolved.type,
      minimum: resolved.minimum,
      maximum: resolved.maximum,
      maxLength: resolved.maxLength,
      default: property.default ?? resolved.default,
      choices: resolved.enum,
      description: property.description ?? resolved.description ?? "",
    });
  }
  return fields;
}

// Follows $ref (into the schema's $defs) and picks the non-null branch of an optional
// (anyOf [..., null]), keeping the outer default and description.
function resolve(root, schema) {
  let current = schema;
  if (current.$ref) current = { ...lookup(root, current.$ref), ...withoutRef(current) };
  const branches = current.anyOf ?? current.oneOf;
  if (branches) {
    const branch = branches.find((option) => option.type !== "null") ?? {};
    const { anyOf, oneOf, ...outer } = current;
    current = { ...resolve(root, branch), ...outer };
  }
  if (current.const !== undefined && !current.enum) current = { ...current, enum: [current.const] };
  return current;
}

function lookup(root, ref) {
  return ref.replace(/^#\//, "").split("/").reduce((node, key) => node?.[key], root) ?? {};
}

function withoutRef({ $ref, ...rest }) {
  return rest;
}
