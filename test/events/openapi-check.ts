/**
 * Checks a JSON value against an OpenAPI 3.0 schema: the subset our documents use ($ref,
 * type, properties, required, items, nullable, enum, and the formats uuid, date, time,
 * date-time). Returns the problems found, empty when the value conforms.
 */
type Schema = Record<string, unknown>;

const FORMATS: Record<string, RegExp> = {
  uuid: /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/,
  date: /^\d{4}-\d{2}-\d{2}$/,
  time: /^\d{2}:\d{2}:\d{2}$/,
  'date-time': /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}/,
};

export function checkSchema(doc: Schema, schema: Schema, value: unknown, at = '$'): string[] {
  if (typeof schema.$ref === 'string') {
    const target = schema.$ref
      .replace(/^#\//, '')
      .split('/')
      .reduce<unknown>((node, key) => (node as Schema)[key], doc) as Schema | undefined;
    if (!target) return [`${at}: unresolved ${schema.$ref}`];
    return checkSchema(doc, target, value, at);
  }
  if (value === null) return schema.nullable ? [] : [`${at}: null not allowed`];
  const problems: string[] = [];
  switch (schema.type) {
    case 'object': {
      if (typeof value !== 'object' || Array.isArray(value)) return [`${at}: expected object`];
      const obj = value as Record<string, unknown>;
      for (const key of (schema.required as string[] | undefined) ?? []) {
        if (!(key in obj)) problems.push(`${at}.${key}: required`);
      }
      for (const [key, sub] of Object.entries((schema.properties as Record<string, Schema> | undefined) ?? {})) {
        if (key in obj) problems.push(...checkSchema(doc, sub, obj[key], `${at}.${key}`));
      }
      return problems;
    }
    case 'array':
      if (!Array.isArray(value)) return [`${at}: expected array`];
      return value.flatMap((v, i) => checkSchema(doc, schema.items as Schema, v, `${at}[${i}]`));
    case 'string': {
      if (typeof value !== 'string') return [`${at}: expected string`];
      const format = FORMATS[schema.format as string];
      if (format && !format.test(value)) problems.push(`${at}: not a ${String(schema.format)}: ${value}`);
      return problems;
    }
    case 'number':
      return typeof value === 'number' && Number.isFinite(value) ? [] : [`${at}: expected number`];
    case 'integer':
      return Number.isInteger(value) ? [] : [`${at}: expected integer`];
    case 'boolean':
      return typeof value === 'boolean' ? [] : [`${at}: expected boolean`];
    default:
      return [];
  }
}
