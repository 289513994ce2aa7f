/**
 * The meta-data XML of ocf:georm:gmd: parameters with types and defaults, the actions with their
 * default timeouts (DRBD-like: a start may wait for a peer, a demote for an async drain), and the
 * promotion score levels the agent sets (documented in the longdesc).
 */
import { defaultConfigPath } from './ocf.js';
import { SCORE } from './scores.js';

export function metadataXml(): string {
  return `<?xml version="1.0"?>
<!DOCTYPE resource-agent SYSTEM "ra-api-1.dtd">
<resource-agent name="gmd" version="1.0">
<version>1.1</version>
<longdesc lang="en">
Manages one georm GeoMirror device (GMD) as a promotable clone, one instance per machine
holding the GMD (promoted-max=1, clone-node-max=1, notify=true).

start runs the GMD process (georm gmd run --cluster-managed, detached, pid and log file in the
machine's run_dir) and starts the GMD unpromoted: AVAILABLE, mirroring with the peer or
resyncing, but not exposed to applications. promote exposes it here (NBD listeners and
nbd_device); sync and MWC GMDs keep role none on both sides, async GMDs switch this side
from secondary to primary. demote hides the device again and, for async, waits until the
peer holds every write before switching back to secondary. stop stops the GMD and ends the
process.

Promotion scores (node attribute set with crm_attribute --promotion from start, monitor and
notify), from the quality of the data here:
${SCORE.UP_TO_DATE_MIRRORING}: mirroring with the peer and not the target of a resync (or this side is the
   resync source);
${SCORE.PEER_UNKNOWN}: no peer to compare with, and this node is not recorded outdated;
${SCORE.OUTDATED}: this side is the target of a resync, or the cluster records it outdated
   (georm hageo fence-peer); promote refuses here;
(no score): divergence (both state maps dirty) — a human decides (georm unify).

monitor returns 0 while mirroring in sync, 190 (degraded) while running unpromoted without
a peer or during a resync, 8 when promoted, 191 when promoted and degraded, 9 when promoted
but the GMD is no longer AVAILABLE, 7 when stopped.
</longdesc>
<shortdesc lang="en">georm GeoMirror device (promotable)</shortdesc>

<parameters>
<parameter name="gmd" unique="1" required="1">
<longdesc lang="en">Name of the GeoMirror device in the cluster file.</longdesc>
<shortdesc lang="en">GMD name</shortdesc>
<content type="string" />
</parameter>
<parameter name="config" unique="0" required="0">
<longdesc lang="en">The georm cluster file (identical on every machine).</longdesc>
<shortdesc lang="en">Cluster file</shortdesc>
<content type="string" default="${defaultConfigPath()}" />
</parameter>
<parameter name="machine" unique="0" required="0">
<longdesc lang="en">This machine's name in the cluster file. Default: the node name (crm_node -n, else uname -n).</longdesc>
<shortdesc lang="en">Machine name</shortdesc>
<content type="string" default="" />
</parameter>
</parameters>

<actions>
<action name="start" timeout="240s" />
<action name="stop" timeout="100s" />
<action name="promote" timeout="90s" />
<action name="demote" timeout="90s" />
<action name="notify" timeout="90s" />
<action name="monitor" depth="0" timeout="20s" interval="10s" role="Promoted" />
<action name="monitor" depth="0" timeout="20s" interval="20s" role="Unpromoted" />
<action name="meta-data" timeout="5s" />
<action name="validate-all" timeout="30s" />
</actions>
</resource-agent>
`;
}
