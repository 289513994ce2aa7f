/** The GMD's imports from the cluster configuration module (src/config), in one place. */
export {
  loadConfig, findGmd, findMachine, gmdMachine, peersOf, endpointsOf, renderConfig,
  type ClusterConfig, type ClusterConfigInput, type Gmd, type GmdMachine, type Machine,
} from '../config/index.js';
export { gatherFacts, compareFacts, formatVerify, configDigest, type MachineFacts, type VerifyFinding } from '../config/verify.js';
