/**
 * Where each key and table of a TOML document starts (line and column, 1-based), addressed by the
 * same paths as the parsed object: `['gmd', 0, 'machine', 1, 'role']`. smol-toml gives positions
 * only for syntax errors; schema errors need them too, so this scanner reads the document's
 * structure (table headers, arrays of tables, dotted keys, multi-line strings and arrays) without
 * interpreting values. It runs only on documents smol-toml has already accepted.
 */
export type TomlPath = ReadonlyArray<string | number>;
export interface Pos { line: number; col: number }

export class TomlPositions {
  private readonly at = new Map<string, Pos>();

  constructor(text: string) {
    scan(text, (path, pos) => { if (!this.at.has(key(path))) this.at.set(key(path), pos); });
  }

  /** Position of the path, or of its longest recorded prefix (the enclosing table), or 1:1. */
  find(path: TomlPath): Pos {
    for (let n = path.length; n > 0; n--) {
      const p = this.at.get(key(path.slice(0, n)));
      if (p) return p;
    }
    return { line: 1, col: 1 };
  }

  /** Exact position of a key or table, if the document has it. */
  get(path: TomlPath): Pos | undefined {
    return this.at.get(key(path));
  }
}

const key = (path: TomlPath) => JSON.stringify(path);

interface ValueState { multi: '"""' | "'''" | null; depth: number }

function scan(text: string, record: (path: TomlPath, pos: Pos) => void): void {
  const lines = text.split(/\r?\n/);
  const arrayCount = new Map<string, number>();
  let current: Array<string | number> = [];
  const st: ValueState = { multi: null, depth: 0 };

  const resolve = (parts: string[], isArray: boolean): Array<string | number> => {
    const path: Array<string | number> = [];
    parts.forEach((part, k) => {
      path.push(part);
      const last = k === parts.length - 1;
      if (last && isArray) {
        const n = (arrayCount.get(key(path)) ?? -1) + 1;
        arrayCount.set(key(path), n);
        path.push(n);
      } else {
        const n = arrayCount.get(key(path));
        if (n !== undefined) path.push(n);
      }
    });
    return path;
  };

  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    if (st.multi !== null || st.depth > 0) {
      scanValue(line, 0, st);
      continue;
    }
    const indent = line.length - line.trimStart().length;
    const t = line.trim();
    if (t === '' || t.startsWith('#')) continue;
    const pos = { line: i + 1, col: indent + 1 };
    if (t.startsWith('[')) {
      const isArray = t.startsWith('[[');
      const close = isArray ? t.indexOf(']]') : t.indexOf(']');
      const parts = splitKey(t.slice(isArray ? 2 : 1, close));
      current = resolve(parts, isArray);
      if (isArray) record(current.slice(0, -1), pos); // the array itself: at its first table
      record(current, pos);
      continue;
    }
    const eq = findEquals(t);
    if (eq < 0) continue;
    const keyPath = [...current, ...splitKey(t.slice(0, eq))];
    record(keyPath, pos);
    scanValue(line, indent + eq + 1, st);
  }
}

/** Index of the `=` that ends the key (outside quotes), or -1. */
function findEquals(s: string): number {
  let q: string | null = null;
  for (let i = 0; i < s.length; i++) {
    const c = s[i]!;
    if (q) { if (c === q) q = null; continue; }
    if (c === '"' || c === "'") q = c;
    else if (c === '=') return i;
  }
  return -1;
}

/** `a."b.c".d` → ['a', 'b.c', 'd']. */
function splitKey(s: string): string[] {
  const out: string[] = [];
  let cur = '';
  let q: string | null = null;
  for (let i = 0; i < s.length; i++) {
    const c = s[i]!;
    if (q) {
      if (c === '\\' && q === '"' && i + 1 < s.length) { cur += s[++i]; continue; }
      if (c === q) q = null; else cur += c;
      continue;
    }
    if (c === '"' || c === "'") q = c;
    else if (c === '.') { out.push(cur.trim()); cur = ''; }
    else cur += c;
  }
  out.push(cur.trim());
  return out;
}

/** Follows strings and brackets through a value so continuation lines are not read as keys. */
function scanValue(line: string, from: number, st: ValueState): void {
  let i = from;
  while (i < line.length) {
    if (st.multi !== null) {
      const end = line.indexOf(st.multi, i);
      if (end < 0) return;
      i = end + 3;
      st.multi = null;
      continue;
    }
    const c = line[i]!;
    if (c === '#') return;
    if (line.startsWith('"""', i) || line.startsWith("'''", i)) {
      st.multi = line.slice(i, i + 3) as '"""' | "'''";
      i += 3;
      continue;
    }
    if (c === '"' || c === "'") {
      let j = i + 1;
      while (j < line.length && line[j] !== c) j += c === '"' && line[j] === '\\' ? 2 : 1;
      i = j + 1;
      continue;
    }
    if (c === '[' || c === '{') st.depth++;
    else if (c === ']' || c === '}') st.depth = Math.max(0, st.depth - 1);
    i++;
  }
}
