/**
 * A small XML reader for what Pacemaker prints (crm_mon --output-as=xml, cibadmin --query) and
 * what `georm hageo cib` writes: elements, attributes, text, comments, the XML declaration and
 * CDATA. No DTDs, no namespaces, no entity definitions (only the five predefined entities and
 * numeric references). Throws on malformed input instead of guessing.
 */

export interface XmlElement {
  name: string;
  attrs: Record<string, string>;
  children: XmlElement[];
  text: string;
}

const ENTITIES: Record<string, string> = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'" };

function decode(s: string): string {
  return s.replace(/&(#x[0-9a-fA-F]+|#[0-9]+|[a-z]+);/g, (all, e: string) => {
    if (e.startsWith('#x')) return String.fromCodePoint(parseInt(e.slice(2), 16));
    if (e.startsWith('#')) return String.fromCodePoint(parseInt(e.slice(1), 10));
    const v = ENTITIES[e];
    if (v === undefined) throw new Error(`XML: unknown entity ${all}`);
    return v;
  });
}

export function parseXml(text: string): XmlElement {
  const root: XmlElement = { name: '#document', attrs: {}, children: [], text: '' };
  const stack: XmlElement[] = [root];
  let i = 0;
  const fail = (why: string): never => { throw new Error(`XML: ${why} at offset ${i}`); };
  while (i < text.length) {
    const lt = text.indexOf('<', i);
    if (lt < 0) { stack[stack.length - 1]!.text += decode(text.slice(i)); break; }
    if (lt > i) stack[stack.length - 1]!.text += decode(text.slice(i, lt));
    i = lt;
    if (text.startsWith('<!--', i)) { const e = text.indexOf('-->', i); if (e < 0) fail('unterminated comment'); i = e + 3; continue; }
    if (text.startsWith('<?', i)) { const e = text.indexOf('?>', i); if (e < 0) fail('unterminated declaration'); i = e + 2; continue; }
    if (text.startsWith('<![CDATA[', i)) {
      const e = text.indexOf(']]>', i); if (e < 0) fail('unterminated CDATA');
      stack[stack.length - 1]!.text += text.slice(i + 9, e); i = e + 3; continue;
    }
    if (text.startsWith('<!', i)) { const e = text.indexOf('>', i); if (e < 0) fail('unterminated <!'); i = e + 1; continue; }
    if (text.startsWith('</', i)) {
      const e = text.indexOf('>', i); if (e < 0) fail('unterminated end tag');
      const name = text.slice(i + 2, e).trim();
      const open = stack.pop();
      if (!open || open === root || open.name !== name) fail(`</${name}> does not close <${open?.name ?? ''}>`);
      i = e + 1;
      continue;
    }
    const tag = /^<([A-Za-z_][\w.:-]*)/.exec(text.slice(i, i + 200));
    if (!tag) fail('bad tag');
    const el: XmlElement = { name: tag![1]!, attrs: {}, children: [], text: '' };
    i += tag![0].length;
    const attrRe = /\s*([A-Za-z_][\w.:-]*)\s*=\s*("([^"]*)"|'([^']*)')|\s*(\/?>)/y;
    for (;;) {
      attrRe.lastIndex = i;
      const m = attrRe.exec(text);
      if (!m) fail(`bad attribute in <${el.name}>`);
      i = attrRe.lastIndex;
      if (m![5]) {
        stack[stack.length - 1]!.children.push(el);
        if (m![5] === '>') stack.push(el);
        break;
      }
      el.attrs[m![1]!] = decode(m![3] ?? m![4] ?? '');
    }
  }
  if (stack.length !== 1) throw new Error(`XML: <${stack[stack.length - 1]!.name}> is not closed`);
  const top = root.children;
  if (top.length !== 1) throw new Error(`XML: expected one root element, found ${top.length}`);
  return top[0]!;
}

/** Every descendant (depth first) named `name`. */
export function findAll(el: XmlElement, name: string): XmlElement[] {
  const out: XmlElement[] = [];
  const walk = (e: XmlElement) => { for (const c of e.children) { if (c.name === name) out.push(c); walk(c); } };
  walk(el);
  return out;
}

/** The first descendant named `name`, or undefined. */
export function findFirst(el: XmlElement, name: string): XmlElement | undefined {
  return findAll(el, name)[0];
}

/** `{name: value}` of the `<nvpair>` children of an element (meta_attributes, instance_attributes, …). */
export function nvpairs(el: XmlElement | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const c of el?.children ?? []) if (c.name === 'nvpair' && c.attrs.name !== undefined) out[c.attrs.name] = c.attrs.value ?? '';
  return out;
}
