/**
 * Cluster files for the HAGEO rendering tests: a two-site hot standby with two geographic networks,
 * a heartbeat-only path and two GMDs (mwc with role none on both machines, async with beta primary),
 * and a three-machine variant (gamma at site west holds no GMD). Tests derive broken variants.
 */
export const HAGEO_SAMPLE = `[cluster]
name = "hs"
key_file = "/etc/georm/cluster.key"

[[site]]
name = "east"
[[site]]
name = "west"

[[network]]
name = "geo1"
[[network]]
name = "geo2"

[[machine]]
name = "alpha"
site = "east"
  [[machine.interface]]
  network = "geo1"
  address = "10.61.1.1"
  port = 7400
  [[machine.interface]]
  network = "geo2"
  address = "10.61.2.1"
  port = 7400

[[machine]]
name = "beta"
site = "west"
  [[machine.interface]]
  network = "geo1"
  address = "10.61.1.2"
  port = 7500
  [[machine.interface]]
  network = "geo2"
  address = "10.61.2.2"
  port = 7500

[[gmd]]
name = "data10gmd"
minor = 10
mode = "mwc"
  [[gmd.machine]]
  machine = "alpha"
  volume = "/var/lib/georm/data10.img"
  state_map = "/var/lib/georm/data10.map"
  role = "none"
  [[gmd.machine]]
  machine = "beta"
  volume = "/var/lib/georm/data10.img"
  state_map = "/var/lib/georm/data10.map"
  role = "none"

[[gmd]]
name = "logs11"
minor = 11
mode = "async"
  [[gmd.machine]]
  machine = "alpha"
  volume = "/var/lib/georm/logs11.img"
  state_map = "/var/lib/georm/logs11.map"
  role = "secondary"
  [[gmd.machine]]
  machine = "beta"
  volume = "/var/lib/georm/logs11.img"
  state_map = "/var/lib/georm/logs11.map"
  role = "primary"

[hageo]
cluster_name = "hsprod"
fencing = "resource-only"
fence_timeout = 20
token = 2000
  [[hageo.heartbeat]]
  machine = "alpha"
  address = "10.61.9.1"
  [[hageo.heartbeat]]
  machine = "beta"
  address = "10.61.9.2"
`;

/** The sample plus a third machine, gamma at site west, on both networks and the heartbeat path. */
export const HAGEO_SAMPLE_3 = HAGEO_SAMPLE
  .replace('[[gmd]]', `[[machine]]
name = "gamma"
site = "west"
  [[machine.interface]]
  network = "geo1"
  address = "10.61.1.3"
  port = 7600
  [[machine.interface]]
  network = "geo2"
  address = "10.61.2.3"
  port = 7600

[[gmd]]`)
  .replace(/$/, `  [[hageo.heartbeat]]
  machine = "gamma"
  address = "10.61.9.3"
`);

/**
 * corosync.conf as nested objects: `key: value` lines become properties, `name {` blocks become
 * arrays under `name` (so repeated blocks such as interface and node stay in order). Comments dropped.
 */
export type ConfBlock = { [key: string]: string | ConfBlock[] };
export function parseCorosyncConf(text: string): ConfBlock {
  const root: ConfBlock = {};
  const stack: ConfBlock[] = [root];
  for (const raw of text.split('\n')) {
    const line = raw.replace(/#.*$/, '').trim();
    if (!line) continue;
    const top = stack[stack.length - 1]!;
    const open = /^([\w.]+)\s*\{$/.exec(line);
    if (open) {
      const child: ConfBlock = {};
      const list = (top[open[1]!] ??= []) as ConfBlock[];
      list.push(child);
      stack.push(child);
    } else if (line === '}') {
      if (stack.length === 1) throw new Error('unbalanced }');
      stack.pop();
    } else {
      const kv = /^([\w.]+):\s*(.*)$/.exec(line);
      if (!kv) throw new Error(`not a corosync.conf line: ${line}`);
      top[kv[1]!] = kv[2]!;
    }
  }
  if (stack.length !== 1) throw new Error('unclosed block');
  return root;
}
